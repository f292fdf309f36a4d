"""`kubeha plan|apply|resume|rollback|journal` on a toy operation: no hosts.

The operation's steps act on a JSON file of keys (test_engine's toy cluster); ClusterAccess,
the probe and the cluster lock are fakes, so every command runs as it does on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import stat
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_engine import THREE_STEPS, FileCluster, set_step, toy_registry
from test_inventory import CLUSTER_YAML
from typer.testing import CliRunner

import kubeha.operations
from kubeha.cli import operations as cli_operations
from kubeha.cli.main import app
from kubeha.errors import InputError
from kubeha.operations import Operation, operation, register, unregister
from kubeha.plan import (
    Journal, JournalError, Plan, PlanError, RunOutcome, Step, StepOutcome, UnknownOperation, inventory_digest,
    new_operation_id,
)
from kubeha.probe import EtcdWritesSummary, ProbePath, ProbeRecord, summarize

runner = CliRunner()
ENDPOINTS = ("https://10.0.0.11:2379", "https://10.0.0.99:2379")


class ToyOperation(Operation):
    """Plans the given steps on the toy cluster; remembers the arguments it was given."""

    name = "toy"
    registry = toy_registry()

    def __init__(self, cluster: FileCluster, steps: tuple[Step, ...] = THREE_STEPS) -> None:
        self.cluster = cluster
        self.steps = steps
        self.arguments: list[dict[str, str]] = []

    def make_plan(self, access, inventory, inventory_path: Path, arguments: Mapping[str, str]) -> Plan:
        self.arguments.append(dict(arguments))
        return Plan(operation=self.name, operation_id=new_operation_id(self.name), arguments=dict(arguments),
                    created=datetime.now(timezone.utc), inventory_digest=inventory_digest(inventory_path.read_text()),
                    steps=self.steps)

    def view_factory(self, access, plan):
        return self.cluster.view

    def etcd_endpoints(self, plan, inventory):
        return ENDPOINTS


class ToyMigrate(ToyOperation):
    name = "etcd-migrate"


class FakeAccess:
    """Acts on the toy cluster: the toy steps' ``ctx.cluster`` is the access the CLI opened."""

    opened: list[dict] = []
    toy: FileCluster

    def __init__(self, inventory, **options) -> None:
        self.inventory = inventory
        self.cluster = inventory.cluster
        FakeAccess.opened.append(options)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return getattr(FakeAccess.toy, name)


class FakeProbe:
    """Two paths; every request succeeds except one failure on the VIP, retried fine."""

    made: list[FakeProbe] = []

    def __init__(self, access, *, node_proxies=False, etcd_writes=False, run_id=None, timeline=None, **_) -> None:
        self.options = {"node_proxies": node_proxies, "etcd_writes": etcd_writes}
        self.run_id = run_id
        self.timeline = timeline
        self.paths = (ProbePath("vip", "https://10.0.0.100:8443", lambda: 200),
                      ProbePath("etcd-writes", "etcd put /kubeha/probe/x/<n>", lambda: None))
        self.records: list[ProbeRecord] = []
        self.started = 0.0
        self.stopped = False
        FakeProbe.made.append(self)

    def start(self) -> None:
        self.started = time.time()
        self.records = [ProbeRecord(self.started, "vip", True, 2.0, 200),
                        ProbeRecord(self.started + 0.05, "vip", False, 1000.0, error="ConnectError: refused"),
                        ProbeRecord(self.started + 1.05, "vip", True, 3.0, 200, retry=True),
                        ProbeRecord(self.started, "etcd-writes", True, 4.0)]
        self.timeline.write_text("".join(json.dumps(r.as_json()) + "\n" for r in self.records))

    def stop(self):
        self.stopped = True
        return summarize(self.records, self.started, self.started + 2, etcd=EtcdWritesSummary(1, 1, ()))


@pytest.fixture
def cluster(tmp_path: Path) -> FileCluster:
    return FileCluster(tmp_path / "cluster.json", healthy="yes")


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_YAML)
    return path


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite"


@pytest.fixture(autouse=True)
def fakes(monkeypatch, cluster):
    FakeAccess.opened = []
    FakeAccess.toy = cluster
    FakeProbe.made = []
    monkeypatch.setattr(kubeha.operations, "_builtin", lambda: ())  # whatever state etcd.py is in
    monkeypatch.setattr(cli_operations, "ClusterAccess", FakeAccess)
    monkeypatch.setattr(cli_operations, "Probe", FakeProbe)
    monkeypatch.setattr(cli_operations, "cluster_lock_for", lambda access: lambda plan: contextlib.nullcontext())


@pytest.fixture
def toy(cluster):
    yield register(ToyOperation(cluster))
    unregister("toy")


@pytest.fixture
def registered():
    names = []

    def add(op: Operation) -> Operation:
        names.append(op.name)
        return register(op)

    yield add
    for name in names:
        unregister(name)


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def make_plan_file(inventory: Path, journal: Path) -> tuple[Plan, Path]:
    """`kubeha plan etcd migrate` with the registered fake etcd-migrate: the saved plan."""
    result = invoke("plan", "etcd", "migrate", "--replace", "m1=s1", "-i", inventory, "--journal", journal)
    assert result.exit_code == 0, result.output
    (saved,) = (journal.parent / "plans").iterdir()
    return Plan.from_json(saved.read_text()), saved


def test_plan_saves_a_private_plan_and_apply_runs_it_with_the_probe(tmp_path, cluster, inventory, journal, registered):
    op = registered(ToyMigrate(cluster))
    plan, saved = make_plan_file(inventory, journal)
    assert op.arguments == [{"replace": "m1=s1"}]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert saved.name == f"{plan.operation_id}.json"
    assert cluster.read() == {"healthy": "yes"}  # planning changes nothing

    result = invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    assert result.exit_code == 0, result.output
    assert cluster.read() == {"healthy": "yes", "a": "1", "b": "2", "c": "3"}
    assert f"{plan.operation_id}: done (3 done)" in result.output
    assert "[1/3] one: set a to 1 - done" in result.output
    assert FakeAccess.opened[-1] == {"etcd_endpoints": ENDPOINTS}
    (probe,) = FakeProbe.made
    assert probe.options == {"node_proxies": True, "etcd_writes": True} and probe.stopped
    assert "probe: 2.0 s" in result.output and "etcd writes: 1, acknowledged 1, lost 0" in result.output

    with Journal(journal) as opened:
        assert [(r.step_id, r.outcome) for r in opened.steps(plan.operation_id)] == [
            ("one", StepOutcome.DONE), ("two", StepOutcome.DONE), ("three", StepOutcome.DONE)]
        (run,) = opened.runs(plan.operation_id)
        (stored,) = opened.probes(plan.operation_id)
    assert stored.run_id == run.run_id
    assert stored.timeline_path == str(journal.parent / "probes" / plan.operation_id / f"run-{run.run_id}.jsonl")
    assert len(Path(stored.timeline_path).read_text().splitlines()) == 4
    assert stored.summary["healthy"] is True and stored.summary["targets"]["vip"] == "https://10.0.0.100:8443"
    vip = next(p for p in stored.summary["paths"] if p["path"] == "vip")
    assert (vip["requests"], vip["failures"], vip["failures_after_retry"]) == (2, 1, 0)


def test_plan_prints_each_format_and_json_stays_parseable(cluster, inventory, journal, registered, tmp_path):
    registered(ToyMigrate(cluster))
    as_json = invoke("plan", "etcd", "migrate", "--replace", "m1=s1", "-i", inventory, "--journal", journal,
                     "--json", "--out", tmp_path / "p.json")
    assert as_json.exit_code == 0, as_json.output
    assert Plan.from_json(as_json.stdout) == Plan.from_json((tmp_path / "p.json").read_text())
    assert f"next: kubeha apply {tmp_path / 'p.json'}" in as_json.stderr
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o600
    markdown = invoke("plan", "etcd", "migrate", "--replace", "m1=s1", "-i", inventory, "--journal", journal,
                      "--format", "markdown")
    assert markdown.stdout.startswith("# etcd-migrate: etcd-migrate-")


def test_apply_asks_first_and_a_no_changes_nothing(cluster, inventory, journal, toy):
    _, saved = make_plan_via(toy, inventory, journal)
    declined = invoke("apply", saved, "-i", inventory, "--journal", journal, input="n\n")
    assert declined.exit_code == 1
    assert "nothing was done" in declined.output and cluster.read() == {"healthy": "yes"}
    accepted = invoke("apply", saved, "-i", inventory, "--journal", journal, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert cluster.read()["c"] == "3"


def make_plan_via(op: ToyOperation, inventory: Path, journal: Path) -> tuple[Plan, Path]:
    """A plan of ``op`` saved where `kubeha plan` saves it (the toy has no plan command)."""
    plan = op.make_plan(None, None, inventory, {"size": "3"})
    return plan, cli_operations.save_plan(plan, None, journal)


def test_apply_takes_the_operation_id_of_a_saved_plan(cluster, inventory, journal, toy):
    plan, _ = make_plan_via(toy, inventory, journal)
    result = invoke("apply", plan.operation_id, "--yes", "--no-probe", "-i", inventory, "--journal", journal)
    assert result.exit_code == 0, result.output
    assert FakeProbe.made == []
    with Journal(journal) as opened:
        assert opened.probes(plan.operation_id) == []


def test_a_refused_step_exits_1_with_one_line_per_reason(cluster, inventory, journal, toy):
    cluster.set("healthy", "no")
    cluster.set("alarm", "NOSPACE")
    plan, saved = make_plan_via(toy, inventory, journal)
    result = invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    start = lines.index("error: step one refused (2 reasons):")
    assert lines[start:start + 4] == [
        "error: step one refused (2 reasons):",
        "  - cluster healthy: the toy cluster is not healthy",
        "  - no alarms: alarm NOSPACE is raised",
        f"fix these, then run: kubeha resume {plan.operation_id}"]
    assert "Traceback" not in result.output
    assert "a" not in cluster.read()
    with Journal(journal) as opened:
        (run,) = opened.runs(plan.operation_id)
        assert run.outcome is RunOutcome.REFUSED
        assert [p.run_id for p in opened.probes(plan.operation_id)] == [run.run_id]  # the probe still counts


def test_resume_after_a_failure_finishes_the_operation(cluster, inventory, journal, registered):
    op = registered(ToyOperation(cluster, (THREE_STEPS[0], set_step("two", "b", "2", fail="apply"), THREE_STEPS[2])))
    plan, saved = make_plan_via(op, inventory, journal)
    failed = invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    assert failed.exit_code == 1
    assert f"after fixing it run kubeha resume {plan.operation_id}" in failed.stderr
    assert "step two failed (rolled back)" in failed.stderr

    cluster.set("fixed", "yes")
    resumed = invoke("resume", plan.operation_id, "--yes", "-i", inventory, "--journal", journal)
    assert resumed.exit_code == 0, resumed.output
    assert f"{plan.operation_id}: done (1 already done, 2 done)" in resumed.output
    assert cluster.read()["c"] == "3"
    shown = json.loads(invoke("journal", plan.operation_id, "--json", "--journal", journal).stdout)
    assert [r["action"] for r in shown["runs"]] == ["apply", "resume"]
    assert [(a["step_id"], a["attempt"], a["outcome"]) for a in shown["attempts"]] == [
        ("one", 1, "done"), ("two", 1, "rolled-back"), ("one", 2, "skipped-already-done"), ("two", 2, "done"),
        ("three", 1, "done")]
    assert [p["run_id"] for p in shown["probes"]] == [r["run_id"] for r in shown["runs"]]


def test_without_its_journal_an_operation_is_not_resumed_blindly(cluster, inventory, journal, registered):
    op = registered(ToyOperation(cluster, (THREE_STEPS[0], set_step("two", "b", "2", fail="apply"), THREE_STEPS[2])))
    plan, saved = make_plan_via(op, inventory, journal)
    assert invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal).exit_code == 1
    journal.unlink()
    for action in ("resume", "rollback"):
        refused = invoke(action, plan.operation_id, "--yes", "-i", inventory, "--journal", journal)
        assert refused.exit_code == 1 and isinstance(refused.exception, UnknownOperation)
        assert str(refused.exception) == (
            f"the journal {journal} knows no operation {plan.operation_id}; kubeha will not resume or roll back "
            f"{plan.operation_id} without its record: give the journal it ran with (--journal), or go on from what "
            f"the cluster shows with kubeha apply {saved} --journal {journal} (steps found done on the cluster are "
            f"skipped)")
    assert cluster.read() == {"healthy": "yes", "a": "1"}

    cluster.set("fixed", "yes")
    applied = invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    assert applied.exit_code == 0, applied.output
    assert f"{plan.operation_id}: done (1 already done, 2 done)" in applied.output
    saved.unlink()
    assert "make a new plan" in str(invoke("resume", "nope", "--journal", journal, "-i", inventory).exception)


def test_rollback_undoes_the_finished_steps(cluster, inventory, journal, toy):
    plan, saved = make_plan_via(toy, inventory, journal)
    assert invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal).exit_code == 0
    result = invoke("rollback", plan.operation_id, "--yes", "-i", inventory, "--journal", journal)
    assert result.exit_code == 0, result.output
    assert cluster.read() == {"healthy": "yes"}
    undo = [line.split(":")[0].strip() for line in result.output.splitlines() if line.startswith("  ")][:3]
    assert undo == ["three", "two", "one"]
    assert f"{plan.operation_id}: rolled-back (3 rolled-back)" in result.output
    again = invoke("rollback", plan.operation_id, "--yes", "-i", inventory, "--journal", journal)
    assert again.exit_code == 0 and "nothing to undo" in again.output


def test_an_unknown_operation_is_one_line_naming_the_known_ones(cluster, inventory, journal, toy, tmp_path):
    with pytest.raises(InputError, match=r"^unknown operation 'nope'; known operations: toy$"):
        operation("nope")
    plan, _ = make_plan_via(toy, inventory, journal)
    other = tmp_path / "other.json"
    other.write_text(plan.model_copy(update={"operation": "nope"}).to_json())
    result = invoke("apply", other, "--yes", "-i", inventory, "--journal", journal)
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError) and "known operations: toy" in str(result.exception)


def test_a_changed_inventory_refuses_the_plan(cluster, inventory, journal, toy):
    _, saved = make_plan_via(toy, inventory, journal)
    inventory.write_text(CLUSTER_YAML.replace("name: prod", "name: other"))
    result = invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    assert result.exit_code == 1
    assert isinstance(result.exception, PlanError) and "changed since" in str(result.exception)
    assert cluster.read() == {"healthy": "yes"}


def test_journal_lists_operations_as_text_and_json(cluster, inventory, journal, toy):
    assert "no operations" in invoke("journal", "--journal", journal).output
    assert json.loads(invoke("journal", "--journal", journal, "--json").stdout) == []
    plan, saved = make_plan_via(toy, inventory, journal)
    invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    listed = json.loads(invoke("journal", "--journal", journal, "--json").stdout)
    assert [(e["operation_id"], e["operation"], e["last_run"]["outcome"]) for e in listed] == [
        (plan.operation_id, "toy", "done")]
    text = invoke("journal", "--journal", journal)
    assert plan.operation_id in text.output and "apply done" in text.output
    detail = invoke("journal", plan.operation_id, "--journal", journal)
    assert detail.exit_code == 0, detail.output
    assert "step attempts" in detail.output and f"probe of run {listed[0]['last_run']['run_id']}" in detail.output
    unknown = invoke("journal", "nope", "--journal", journal)
    assert unknown.exit_code == 1 and isinstance(unknown.exception, JournalError)


def test_report_writes_one_private_html_file_from_the_journal(cluster, inventory, journal, toy, tmp_path):
    plan, saved = make_plan_via(toy, inventory, journal)
    invoke("apply", saved, "--yes", "-i", inventory, "--journal", journal)
    result = invoke("report", plan.operation_id, "--no-check", "--journal", journal)
    assert result.exit_code == 0, result.output
    written = journal.parent / "reports" / f"{plan.operation_id}.html"
    assert str(written) in result.output.replace("\n", "")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    html = written.read_text()
    assert all(step.id in html for step in plan.steps) and "No check: --no-check" in html
    chosen = tmp_path / "r.html"
    chosen.write_text("old")
    chosen.chmod(0o644)  # an earlier file's mode does not survive
    assert invoke("report", plan.operation_id, "--no-check", "--journal", journal, "-o", chosen).exit_code == 0
    assert chosen.read_text().startswith("<!DOCTYPE html>") and stat.S_IMODE(chosen.stat().st_mode) == 0o600
    unknown = invoke("report", "nope-1", "--no-check", "--journal", journal)
    assert unknown.exit_code == 1 and isinstance(unknown.exception, InputError)


def test_probe_counters_count_first_attempts_and_the_longest_gap():
    counters = cli_operations.ProbeCounters(started=100.0)
    records = [ProbeRecord(100.0, "vip", True, 10.0), ProbeRecord(100.1, "vip", False, 1000.0),
               ProbeRecord(101.1, "vip", False, 1000.0, retry=True)]
    counters.update(records)
    records.append(ProbeRecord(102.5, "vip", True, 0.0))
    counters.update(records)
    assert (counters.requests, counters.failures) == (3, 1)
    assert counters.longest_gap(now=102.6) == pytest.approx(2.49)
    assert counters.longest_gap(now=110.0) == pytest.approx(7.5)


def test_etcd_add_plans_saves_and_applies_in_one_go(cluster, inventory, journal, registered):
    class ToyAdd(ToyOperation):
        name = "etcd-add"

    op = registered(ToyAdd(cluster))
    result = invoke("etcd", "add", "s1", "--yes", "--no-probe", "-i", inventory, "--journal", journal)
    assert result.exit_code == 0, result.output
    assert op.arguments == [{"host": "s1"}]
    (saved,) = (journal.parent / "plans").iterdir()
    plan = Plan.from_json(saved.read_text())
    assert f"{plan.operation_id}: done (3 done)" in result.output
    assert result.output.count("1. set a to 1") == 1  # the plan is shown once
    assert cluster.read()["c"] == "3"
    plan_only = invoke("plan", "etcd", "add", "s2", "-i", inventory, "--journal", journal)
    assert plan_only.exit_code == 0 and op.arguments[-1] == {"host": "s2"}


def test_the_demo_says_in_one_line_that_it_needs_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = invoke("demo")
    assert result.exit_code == 1 and isinstance(result.exception, InputError)
    assert "run it as root" in str(result.exception)
