"""The engine on a toy cluster: a JSON file of keys, so a killed process leaves it behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from kubeha.errors import KubehaError
from kubeha.plan import (
    Change, ChangeKind, ClusterLockLost, EngineRefused, Journal, JournalWrittenBack, OperationInterrupted, OperationLocked, Plan, PlanError, Registry,
    RollbackStopped, RunOutcome, Step, StepContext, StepFailed, StepKind, StepNotVerified, StepOutcome, apply,
    resume, rollback,
)

OP = "toy-20240501-101500-abcd"
CREATED = datetime(2024, 5, 1, 10, 15, tzinfo=timezone.utc)


class FileCluster:
    """Keys in a JSON file, each write atomic: the fake cluster steps change."""

    def __init__(self, path: Path, **initial: str) -> None:
        self.path = path
        if initial or not path.exists():
            self._save(dict(initial))

    def read(self) -> dict[str, str]:
        return json.loads(self.path.read_text())

    def set(self, key: str, value: str | None) -> None:
        keys = self.read()
        if value is None:
            keys.pop(key, None)
        else:
            keys[key] = value
        self._save(keys)

    def _save(self, keys: dict[str, str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(keys, sort_keys=True))
        os.replace(tmp, self.path)

    def view(self) -> MappingProxyType[str, str]:
        return MappingProxyType(self.read())


class Transient(KubehaError):
    """A toy error worth trying again."""


class SetKey(StepKind):
    """Sets its change's target key from ``before`` to ``after``; arguments make it misbehave:
    ``fail`` ("apply" or "verify", unless the cluster has ``fixed``), ``refuse`` (a precheck
    reason), ``rollback_fails``, ``block_while`` (a file: apply waits while it exists, after
    creating ``<file>.blocked``), ``interrupt`` (sends this process SIGINT while applying)."""

    name = "set-key"

    def precheck(self, ctx: StepContext) -> list[str]:
        return [str(ctx.step.arguments["refuse"])] if "refuse" in ctx.step.arguments else []

    def is_done(self, ctx: StepContext) -> bool:
        change = ctx.step.changes[0]
        return ctx.view.get(change.target) == change.after

    def _fails(self, ctx: StepContext, phase: str) -> bool:
        return ctx.step.arguments.get("fail") == phase and "fixed" not in ctx.view

    def apply(self, ctx: StepContext) -> None:
        change, arguments = ctx.step.changes[0], ctx.step.arguments
        if "block_while" in arguments:
            gate = Path(str(arguments["block_while"]))
            Path(f"{gate}.blocked").touch()
            while gate.exists():
                time.sleep(0.02)
        if arguments.get("interrupt"):
            os.kill(os.getpid(), signal.SIGINT)
        ctx.took_backup("toy")
        ctx.cluster.set(change.target, change.after)
        if self._fails(ctx, "apply"):
            raise KubehaError(f"toy disk full writing {change.target}")

    def verify(self, ctx: StepContext) -> None:
        if self._fails(ctx, "verify") or not self.is_done(ctx):
            raise StepNotVerified(f"{ctx.step.changes[0].target} is not {ctx.step.changes[0].after}")

    def rollback(self, ctx: StepContext) -> None:
        if ctx.step.arguments.get("rollback_fails"):
            raise KubehaError("toy backup is gone")
        change = ctx.step.changes[0]
        ctx.cluster.set(change.target, change.before)


class FlakySetKey(SetKey):
    """Fails with a retryable error until its ``tries`` counter on the cluster reaches ``succeed_on``."""

    name = "flaky-set-key"
    retryable = (Transient,)
    retry_budget = 2
    retry_delay_seconds = 0

    def apply(self, ctx: StepContext) -> None:
        tries = int(ctx.cluster.read().get("tries", "0")) + 1
        ctx.cluster.set("tries", str(tries))
        if tries < int(ctx.step.arguments["succeed_on"]):
            raise Transient(f"toy etcd busy (try {tries})")
        super().apply(ctx)


def toy_registry() -> Registry:
    registry = Registry()
    registry.add_kind(SetKey())
    registry.add_kind(FlakySetKey())

    @registry.check("cluster healthy")
    def cluster_healthy(view: Any) -> str | None:
        return None if view.get("healthy", "yes") == "yes" else "the toy cluster is not healthy"

    @registry.check("no alarms")
    def no_alarms(view: Any) -> str | None:
        return f"alarm {view['alarm']} is raised" if "alarm" in view else None

    return registry


def set_step(step_id: str, key: str, after: str, before: str | None = None, *, kind: str = "set-key",
             reversible: bool = True, **arguments: Any) -> Step:
    return Step(id=step_id, kind=kind, title=f"set {key} to {after}", hosts=("toy",),
                changes=(Change(kind=ChangeKind.FILE, target=key, before=before, after=after, host="toy"),),
                safety_checks=("cluster healthy", "no alarms"), verification=f"{key} reads {after}",
                rollback=f"set {key} back", estimated_seconds=10, reversible=reversible, arguments=arguments)


def toy_plan(*steps: Step, operation_id: str = OP) -> Plan:
    return Plan(operation="toy", operation_id=operation_id, arguments={"size": "3"}, created=CREATED,
                inventory_digest="sha256:toy", steps=steps)


THREE_STEPS = (set_step("one", "a", "1"), set_step("two", "b", "2"), set_step("three", "c", "3"))


@pytest.fixture
def cluster(tmp_path: Path) -> FileCluster:
    return FileCluster(tmp_path / "cluster.json", healthy="yes")


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        yield journal


def run(plan: Plan, cluster: FileCluster, journal: Journal, events: list[tuple[str, str]] | None = None):
    def note(progress):
        if events is not None and progress.step:
            events.append((progress.event, progress.step.id))

    return apply(plan, toy_registry(), cluster.view, journal, cluster=cluster, on_progress=note)


def outcomes(journal: Journal, operation_id: str = OP) -> list[tuple[str, StepOutcome | None]]:
    return [(record.step_id, record.outcome) for record in journal.steps(operation_id)]


def test_apply_runs_the_steps_in_order_and_journals_them(cluster, journal):
    events: list[tuple[str, str]] = []
    result = run(toy_plan(*THREE_STEPS), cluster, journal, events)
    assert result.outcome is RunOutcome.DONE
    assert [step for event, step in events if event == "applying"] == ["one", "two", "three"]
    assert [event for event, step in events if step == "one"] == ["checking", "applying", "verifying", "done"]
    assert cluster.read() == {"healthy": "yes", "a": "1", "b": "2", "c": "3"}
    records = journal.steps(OP)
    assert [(r.step_id, r.attempt, r.outcome, r.retries, r.message) for r in records] == [
        ("one", 1, StepOutcome.DONE, 0, ""), ("two", 1, StepOutcome.DONE, 0, ""), ("three", 1, StepOutcome.DONE, 0, "")]
    assert all(r.started <= r.finished for r in records)
    assert records[0].backups == (f"toy:/var/lib/kubeha/backups/{OP}",)
    (run_record,) = journal.runs(OP)
    assert (run_record.action.value, run_record.outcome, run_record.pid) == ("apply", RunOutcome.DONE, os.getpid())


def test_a_refusal_lists_every_reason_and_touches_nothing(cluster, journal):
    cluster.set("healthy", "no")
    cluster.set("alarm", "NOSPACE")
    before = cluster.read()
    plan = toy_plan(set_step("one", "a", "1", refuse="member m3 is the leader"), *THREE_STEPS[1:])
    with pytest.raises(EngineRefused) as refused:
        run(plan, cluster, journal)
    assert refused.value.reasons == [
        "cluster healthy: the toy cluster is not healthy", "no alarms: alarm NOSPACE is raised",
        "set-key precheck: member m3 is the leader"]
    assert str(refused.value).splitlines() == [
        "step one refused (3 reasons):",
        "  - cluster healthy: the toy cluster is not healthy",
        "  - no alarms: alarm NOSPACE is raised",
        "  - set-key precheck: member m3 is the leader",
        f"fix these, then run: kubeha resume {OP}"]
    assert cluster.read() == before
    (record,) = journal.steps(OP)
    assert (record.outcome, record.message) == (StepOutcome.REFUSED, "; ".join(refused.value.reasons))
    assert journal.runs(OP)[0].outcome is RunOutcome.REFUSED


@pytest.mark.parametrize("phase", ["apply", "verify"])
def test_a_failed_step_is_rolled_back_and_the_run_stops_with_the_next_command(cluster, journal, phase):
    plan = toy_plan(THREE_STEPS[0], set_step("two", "b", "2", before="old", fail=phase), THREE_STEPS[2])
    cluster.set("b", "old")
    with pytest.raises(StepFailed) as failed:
        run(plan, cluster, journal)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("step two failed (rolled back): ")
    assert f"kubeha resume {OP}" in message and f"kubeha rollback {OP}" in message
    assert cluster.read() == {"healthy": "yes", "a": "1", "b": "old"}
    assert outcomes(journal) == [("one", StepOutcome.DONE), ("two", StepOutcome.ROLLED_BACK)]
    assert journal.runs(OP)[0].outcome is RunOutcome.FAILED


def test_a_failed_rollback_is_said_and_the_step_recorded_failed(cluster, journal):
    plan = toy_plan(set_step("one", "a", "1", fail="apply", rollback_fails=True))
    with pytest.raises(StepFailed, match=r"NOT rolled back.*rollback failed too: toy backup is gone") as failed:
        run(plan, cluster, journal)
    assert failed.value.rolled_back is False
    assert outcomes(journal) == [("one", StepOutcome.FAILED)]


def test_resume_recognises_done_steps_on_the_cluster(cluster, journal):
    plan = toy_plan(THREE_STEPS[0], set_step("two", "b", "2", fail="apply"), THREE_STEPS[2])
    with pytest.raises(StepFailed):
        run(plan, cluster, journal)
    cluster.set("fixed", "yes")
    result = resume(OP, toy_registry(), cluster.view, journal, cluster=cluster)
    assert result.steps == {"one": StepOutcome.SKIPPED_ALREADY_DONE, "two": StepOutcome.DONE,
                            "three": StepOutcome.DONE}
    assert [r.attempt for r in journal.steps(OP) if r.step_id == "two"] == [1, 2]
    assert [r.action.value for r in journal.runs(OP)] == ["apply", "resume"]


def test_retryable_errors_are_tried_again_and_counted(cluster, journal):
    run(toy_plan(set_step("one", "a", "1", kind="flaky-set-key", succeed_on=3)), cluster, journal)
    (record,) = journal.steps(OP)
    assert (record.outcome, record.retries) == (StepOutcome.DONE, 2)


def test_a_spent_retry_budget_fails_the_step_with_its_retries_journaled(cluster, journal):
    with pytest.raises(StepFailed, match="toy etcd busy"):
        run(toy_plan(set_step("one", "a", "1", kind="flaky-set-key", succeed_on=9)), cluster, journal)
    (record,) = journal.steps(OP)
    assert (record.outcome, record.retries) == (StepOutcome.ROLLED_BACK, 2)


def test_ctrl_c_during_a_step_stops_the_run_after_it(cluster, journal):
    plan = toy_plan(set_step("one", "a", "1", interrupt=True), *THREE_STEPS[1:])
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in a shell's background
    with pytest.raises(OperationInterrupted, match=f"before running step two; continue with kubeha resume {OP}"):
        run(plan, cluster, journal)
    assert outcomes(journal) == [("one", StepOutcome.DONE)]
    assert journal.runs(OP)[0].outcome is RunOutcome.INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is before  # the engine's handler is gone again


def test_rollback_undoes_the_finished_steps_newest_first(cluster, journal):
    run(toy_plan(*THREE_STEPS), cluster, journal)
    events: list[tuple[str, str]] = []
    result = rollback(OP, toy_registry(), cluster.view, journal, cluster=cluster,
                      on_progress=lambda p: events.append((p.event, p.step.id)))
    assert [step for event, step in events if event == "rolling back"] == ["three", "two", "one"]
    assert result.outcome is RunOutcome.ROLLED_BACK
    assert cluster.read() == {"healthy": "yes"}
    assert outcomes(journal)[3:] == [("three", StepOutcome.ROLLED_BACK), ("two", StepOutcome.ROLLED_BACK),
                                     ("one", StepOutcome.ROLLED_BACK)]
    assert rollback(OP, toy_registry(), cluster.view, journal, cluster=cluster).steps == {}


def test_rollback_leaves_alone_steps_it_found_already_done(cluster, journal):
    cluster.set("a", "1")  # someone did step one before kubeha ran
    run(toy_plan(*THREE_STEPS), cluster, journal)
    rollback(OP, toy_registry(), cluster.view, journal, cluster=cluster)
    assert cluster.read() == {"healthy": "yes", "a": "1"}


def test_rollback_stops_before_a_step_that_cannot_be_undone(cluster, journal):
    plan = toy_plan(set_step("one", "a", "1", reversible=False), *THREE_STEPS[1:])
    run(plan, cluster, journal)
    with pytest.raises(RollbackStopped, match="rollback stopped at step one: it cannot be undone automatically "
                                              r"\(steps that cannot: one\)"):
        rollback(OP, toy_registry(), cluster.view, journal, cluster=cluster)
    assert cluster.read() == {"healthy": "yes", "a": "1"}
    assert journal.runs(OP)[-1].outcome is RunOutcome.ROLLBACK_STOPPED


def test_a_second_process_cannot_run_the_same_operation(journal):
    with journal.lock(OP), pytest.raises(OperationLocked, match=f"pid {os.getpid()}"):
        with journal.lock(OP):
            pass


def test_plans_the_registry_cannot_run_are_refused_whole(cluster, journal):
    plan = toy_plan(Step(id="one", kind="teleport", title="t", safety_checks=("moon phase", "cluster healthy")))
    with pytest.raises(PlanError, match="unknown safety check 'moon phase', step kind 'teleport'"):
        run(plan, cluster, journal)
    assert journal.operation_ids() == []


def test_a_plan_made_from_another_inventory_is_refused(cluster, journal):
    with pytest.raises(PlanError, match="inventory changed"):
        apply(toy_plan(*THREE_STEPS), toy_registry(), cluster.view, journal, inventory_digest="sha256:other")


def test_another_plan_under_a_journaled_id_is_refused(cluster, journal):
    run(toy_plan(THREE_STEPS[0]), cluster, journal)
    with pytest.raises(PlanError, match="different plan"):
        run(toy_plan(*THREE_STEPS), cluster, journal)


# -- a process killed mid-run


def apply_in_child(journal_path: str, cluster_path: str, gate: str) -> None:
    """What the child process runs: the three steps, the second one waiting at ``gate``."""
    cluster = FileCluster(Path(cluster_path))
    plan = toy_plan(THREE_STEPS[0], set_step("two", "b", "2", block_while=gate), THREE_STEPS[2])
    with Journal(journal_path) as journal:
        run(plan, cluster, journal)


def test_a_run_killed_mid_step_is_finished_by_resume(tmp_path, cluster, journal):
    gate = tmp_path / "gate"
    gate.touch()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import test_engine; "
                               "test_engine.apply_in_child(*sys.argv[2:])",
         str(Path(__file__).parent), str(journal.path), str(cluster.path), str(gate)])
    try:
        deadline = time.monotonic() + 15
        while not Path(f"{gate}.blocked").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child never reached step two"
            time.sleep(0.02)
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup, the journal row stays unfinished
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert outcomes(journal) == [("one", StepOutcome.DONE), ("two", None)]
    assert journal.runs(OP)[0].outcome is None

    gate.unlink()
    resume(OP, toy_registry(), cluster.view, journal, cluster=cluster)

    uninterrupted = FileCluster(tmp_path / "uninterrupted.json", healthy="yes")
    with Journal(tmp_path / "other" / "journal.sqlite") as other:
        run(journal.plan(OP), uninterrupted, other)
    assert cluster.read() == uninterrupted.read() == {"healthy": "yes", "a": "1", "b": "2", "c": "3"}
    assert outcomes(journal)[2:] == [("one", StepOutcome.SKIPPED_ALREADY_DONE), ("two", StepOutcome.DONE),
                                     ("three", StepOutcome.DONE)]


def test_a_lost_cluster_lock_stops_the_run_between_steps(cluster, journal):
    class LeaseLock:
        """Held for the first step only, as when etcd stops answering the lease renewals."""

        checks = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def check(self):
            LeaseLock.checks += 1
            if LeaseLock.checks > 1:
                raise ClusterLockLost("the cluster lock was lost: resume later")

    with pytest.raises(ClusterLockLost):
        apply(toy_plan(*THREE_STEPS), toy_registry(), cluster.view, journal, cluster=cluster,
              cluster_lock=lambda plan: LeaseLock())
    assert outcomes(journal) == [("one", StepOutcome.DONE)]
    assert cluster.read() == {"healthy": "yes", "a": "1"}
    assert journal.runs(OP)[-1].outcome is RunOutcome.INTERRUPTED


class LookFails(SetKey):
    """A SetKey whose look at the cluster fails while the cluster has ``unreachable``."""

    name = "look-fails"

    def is_done(self, ctx: StepContext) -> bool:
        if "unreachable" in ctx.view:
            raise KubehaError("toy: the SSH connection broke")
        return super().is_done(ctx)


def test_a_step_whose_look_fails_is_refused_with_the_next_command(cluster, journal):
    registry = toy_registry()
    registry.add_kind(LookFails())
    cluster.set("unreachable", "yes")
    plan = toy_plan(THREE_STEPS[0], set_step("two", "b", "2", kind="look-fails"))
    with pytest.raises(EngineRefused) as refused:
        apply(plan, registry, cluster.view, journal, cluster=cluster)
    assert refused.value.reasons == ["whether it is done already: could not look: toy: the SSH connection broke"]
    assert f"kubeha resume {OP}" in str(refused.value)
    assert outcomes(journal) == [("one", StepOutcome.DONE), ("two", StepOutcome.REFUSED)]
    cluster.set("unreachable", None)
    resume(OP, registry, cluster.view, journal, cluster=cluster)
    assert cluster.read()["b"] == "2"


def test_a_journal_deleted_between_steps_is_written_back_and_the_run_stops(cluster, journal):
    def delete_after_one(progress):
        if progress.event == "done" and progress.step.id == "one":
            journal.path.unlink()

    with pytest.raises(JournalWrittenBack) as stopped:
        apply(toy_plan(*THREE_STEPS), toy_registry(), cluster.view, journal, cluster=cluster,
              on_progress=delete_after_one)
    assert str(stopped.value) == (
        f"the journal {journal.path} was deleted during the run: kubeha wrote it back from the copy it had open "
        f"and stopped before step two; find what removes files there, then continue with kubeha resume {OP}")
    assert cluster.read() == {"healthy": "yes", "a": "1"}
    with Journal(journal.path) as on_disk:
        assert outcomes(on_disk) == [("one", StepOutcome.DONE)]
        assert on_disk.runs(OP)[-1].outcome is RunOutcome.INTERRUPTED
    resume(OP, toy_registry(), cluster.view, journal, cluster=cluster)
    assert cluster.read()["c"] == "3"


class MarkKey(SetKey):
    """A SetKey whose effect is nothing to take back (like a snapshot): rollback passes over it."""

    name = "mark-key"
    nothing_to_undo = True


def test_a_step_check_judges_the_step_it_guards(cluster, journal):
    registry = toy_registry()
    registry.add_kind(MarkKey())

    @registry.step_check("key is free")
    def key_is_free(view: Any, step: Step) -> str | None:
        key = step.changes[0].target
        return f"{key} is taken" if key in view else None

    cluster.set("b", "taken")
    guarded = [s.model_copy(update={"safety_checks": ("key is free",)}) for s in THREE_STEPS[:2]]
    with pytest.raises(EngineRefused) as refused:
        apply(toy_plan(*guarded), registry, cluster.view, journal, cluster=cluster)
    assert refused.value.reasons == ["key is free: b is taken"]
    assert cluster.read()["a"] == "1"


def test_rollback_passes_over_steps_with_nothing_to_undo(cluster, journal):
    registry = toy_registry()
    registry.add_kind(MarkKey())
    plan = toy_plan(set_step("mark", "m", "1", kind="mark-key"), *THREE_STEPS[:2])
    apply(plan, registry, cluster.view, journal, cluster=cluster)
    rollback(OP, registry, cluster.view, journal, cluster=cluster)
    assert cluster.read() == {"healthy": "yes", "m": "1"}
    assert [(step, outcome) for step, outcome in outcomes(journal) if outcome is StepOutcome.ROLLED_BACK] == [
        ("two", StepOutcome.ROLLED_BACK), ("one", StepOutcome.ROLLED_BACK)]
