"""`kubeha audit`: a journal whose looks agree with the simulator passes; the first look that
does not is named. Pure: a real journal file, made-up looks, no hosts."""

from __future__ import annotations

import json

from helpers.plans import lab_cluster, migrate, verdicts_of
from typer.testing import CliRunner

from kubeha.cli.main import app
from kubeha.inventory import Inventory, dump_inventory
from kubeha.operations.audit import audit
from kubeha.operations.simulator import ControlPlaneModel
from kubeha.plan import Journal, RunAction, RunOutcome, StepOutcome

CLUSTER = lab_cluster()
PLAN = migrate(CLUSTER, "master1=spare1")


def look_of(model: ControlPlaneModel) -> dict:
    """What the engine's look would store for a cluster in the state ``model`` says."""
    vip = str(CLUSTER.vip.address)
    return {"voters": sorted(model.voters), "learners": sorted(model.learners),
            "healthy": sorted(model.serving & (model.voters | model.learners)), "leader": model.leader,
            "in_lbs": sorted(model.in_lbs), "vip_holders": [model.vips[vip]] if model.vips.get(vip) else []}


def journal_of_the_run(tmp_path, looks: list[dict], stop_after: int | None = None) -> Journal:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record_plan(PLAN)
    run_id = journal.start_run(PLAN.operation_id, RunAction.APPLY)
    for i, (step, look) in enumerate(zip(PLAN.steps, looks)):
        record = journal.start_step(run_id, PLAN.operation_id, step.id)
        journal.record_observation(record, look)
        journal.finish_step(record, StepOutcome.DONE if stop_after is None or i < stop_after else StepOutcome.ROLLED_BACK)
        if stop_after is not None and i == stop_after:
            break
    journal.finish_run(run_id, RunOutcome.DONE)
    return journal


def simulated_looks() -> list[dict]:
    verdicts = verdicts_of(CLUSTER, PLAN)
    befores = [verdicts[0].during] + [v.after for v in verdicts[:-1]]  # the first step changes nothing while it runs
    return [look_of(model) for model in befores]


def test_a_run_that_went_as_simulated_has_no_divergence(tmp_path):
    with journal_of_the_run(tmp_path, simulated_looks()) as journal:
        result = audit(PLAN, CLUSTER, journal.steps(PLAN.operation_id), journal.observations(PLAN.operation_id))
    assert result.divergence is None and result.stopped_at is None
    assert result.compared == len(PLAN.steps)
    assert "no divergence" in result.describe()


def test_the_first_look_that_differs_is_named(tmp_path):
    looks = simulated_looks()
    ids = [s.id for s in PLAN.steps]
    at = ids.index("promote-member-spare1")
    for look in looks[at:]:  # the learner never showed up healthy in the member list
        look["learners"], look["voters"] = [], [v for v in look["voters"] if v != "spare1"]
    with journal_of_the_run(tmp_path, looks) as journal:
        result = audit(PLAN, CLUSTER, journal.steps(PLAN.operation_id), journal.observations(PLAN.operation_id))
    assert result.divergence is not None and result.divergence.step == "promote-member-spare1"
    assert any(d.startswith("learners: the model has spare1; the cluster had none") for d in result.divergence.differences)
    assert result.compared == at


def test_the_audit_ends_where_the_run_stopped(tmp_path):
    with journal_of_the_run(tmp_path, simulated_looks(), stop_after=5) as journal:
        result = audit(PLAN, CLUSTER, journal.steps(PLAN.operation_id), journal.observations(PLAN.operation_id))
    assert result.divergence is None and result.stopped_at == PLAN.steps[5].id
    assert "has not carried out" in result.describe()


def test_the_command_says_it_in_one_line_and_in_json(tmp_path):
    journal_of_the_run(tmp_path, simulated_looks()).close()
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(dump_inventory(Inventory(cluster=CLUSTER)))
    common = [PLAN.operation_id, "-i", str(inventory), "--journal", str(tmp_path / "journal.sqlite")]
    said = CliRunner().invoke(app, ["audit", *common])
    assert said.exit_code == 0, said.output
    assert said.output.count("\n") == 1 and "no divergence" in said.output
    as_json = CliRunner().invoke(app, ["audit", *common, "--json"])
    assert json.loads(as_json.output)["divergence"] is None
