"""Carrying out a plan: apply, resume after a crash or a fix, and roll back.

For each step, in order, the engine takes a fresh view of the cluster and decides from
that one view: a step whose effect is already there is skipped (resume recognises done
steps by looking at the cluster, not by trusting the journal); otherwise every named safety
check and the kind's precheck are judged, and any reason refuses the step, all reasons
listed, with nothing of it done. Then the step is applied and verified against another
fresh view; when either fails the step is rolled back and the run stops with the cause and
the next command. Every attempt is journaled.

Judging "already done" before the safety checks is on purpose: checks guard *doing* a
step, and a done step's own effect often fails them (a removed member cannot be removed
again), which would make an interrupted operation impossible to resume.

Ctrl-C asks the run to stop after the current step; a second Ctrl-C stops it at once
(the step is journaled as interrupted and resume will look at the cluster to see how far
it got).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NoReturn

from kubeha.errors import KubehaError
from kubeha.plan.errors import (
    ClusterLockLost, EngineRefused, JournalWrittenBack, OperationInterrupted, PlanError, RollbackStopped, StepFailed,
    StepNotVerified, rollback_command,
)
from kubeha.plan.journal import Journal, RunAction, RunOutcome, StepOutcome, StepRecord
from kubeha.plan.kinds import Registry, StepContext, StepKind, ViewFactory
from kubeha.plan.model import Plan, Step
from kubeha.plan.secrets import one_line

# The hook for the cluster-side lock (a later part): entered around a whole run, it should
# raise a KubehaError when another operator holds the cluster.
ClusterLock = Callable[[Plan], AbstractContextManager[object]]


@dataclass(frozen=True)
class Progress:
    """One thing worth showing on screen while a run goes on."""

    operation_id: str
    event: str  # checking, skipped, applying, verifying, retrying, done, refused, rolling back, rolled-back, failed, stopping
    step: Step | None = None
    index: int = 0  # 1-based position of the step in the plan
    total: int = 0
    message: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class RunResult:
    operation_id: str
    outcome: RunOutcome
    steps: dict[str, StepOutcome]  # what this run did with each step it reached


def describe(error: BaseException) -> str:
    """One redacted line for an error; foreign errors keep their type, as it is often the clue."""
    text = str(error) if isinstance(error, KubehaError) else f"{type(error).__name__}: {error}"
    return one_line(text)


def apply(plan: Plan, registry: Registry, view_factory: ViewFactory, journal: Journal, *,
          cluster: Any = None, on_progress: ProgressCallback | None = None,
          cluster_lock: ClusterLock | None = None, inventory_digest: str | None = None) -> RunResult:
    """Run every step of ``plan`` that is not done yet; raise EngineRefused, StepFailed or
    OperationInterrupted when the run stops early."""
    return _Run(plan, registry, view_factory, journal, cluster, on_progress, cluster_lock).apply(
        RunAction.APPLY, inventory_digest)


def resume(operation_id: str, registry: Registry, view_factory: ViewFactory, journal: Journal, *,
           cluster: Any = None, on_progress: ProgressCallback | None = None,
           cluster_lock: ClusterLock | None = None, inventory_digest: str | None = None) -> RunResult:
    """Apply the journaled plan again: done steps are recognised on the cluster and skipped."""
    return _Run(journal.plan(operation_id), registry, view_factory, journal, cluster, on_progress,
                cluster_lock).apply(RunAction.RESUME, inventory_digest)


def rollback(operation_id: str, registry: Registry, view_factory: ViewFactory, journal: Journal, *,
             cluster: Any = None, on_progress: ProgressCallback | None = None,
             cluster_lock: ClusterLock | None = None) -> RunResult:
    """Undo, newest first, every step kubeha changed and has not undone yet; stop with
    RollbackStopped before a step that cannot be undone or when undoing one fails."""
    return _Run(journal.plan(operation_id), registry, view_factory, journal, cluster, on_progress,
                cluster_lock).rollback()


def steps_to_undo(plan: Plan, records: list[StepRecord]) -> list[Step]:
    """The steps kubeha changed and has not rolled back since, newest first.

    A step only ever skipped as already done was done by someone else, so it is not ours to
    undo; a step cut short (no outcome) or failed without rollback may have changed things.
    """
    changed: dict[str, bool] = {}
    for record in records:
        if record.outcome in (StepOutcome.DONE, StepOutcome.FAILED, StepOutcome.INTERRUPTED, None):
            changed[record.step_id] = True
        elif record.outcome is StepOutcome.ROLLED_BACK:
            changed[record.step_id] = False
    return [step for step in reversed(plan.steps) if changed.get(step.id)]


_RUN_OUTCOMES: dict[type[KubehaError], RunOutcome] = {
    EngineRefused: RunOutcome.REFUSED,
    StepFailed: RunOutcome.FAILED,
    OperationInterrupted: RunOutcome.INTERRUPTED,
    RollbackStopped: RunOutcome.ROLLBACK_STOPPED,
    ClusterLockLost: RunOutcome.INTERRUPTED,
    JournalWrittenBack: RunOutcome.INTERRUPTED,
}


@dataclass
class _Attempt:
    retries: int = 0  # counted here so the journal has it even when the step finally fails


class _InterruptDeferral:
    """The first Ctrl-C is noted and acted on between steps; the second one interrupts."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: Any = None

    def __enter__(self) -> _InterruptDeferral:
        # Python only lets the main thread handle signals; elsewhere Ctrl-C is not ours anyway.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._on_first()


class _Run:
    def __init__(self, plan: Plan, registry: Registry, view_factory: ViewFactory, journal: Journal,
                 cluster: Any, on_progress: ProgressCallback | None, cluster_lock: ClusterLock | None) -> None:
        self.plan = plan
        self.op = plan.operation_id
        self.registry = registry
        self.view_factory = view_factory
        self.journal = journal
        self.cluster = cluster
        self.on_progress = on_progress or (lambda progress: None)
        self.cluster_lock = cluster_lock or (lambda plan: contextlib.nullcontext())
        self.outcomes: dict[str, StepOutcome] = {}
        self.lock_check: Callable[[], None] | None = None
        self.run_id = 0
        self.current: Step | None = None
        self.interrupt = _InterruptDeferral(
            lambda: self._progress("stopping", self.current, "Ctrl-C: stopping after this step (again: at once)"))

    # -- framing shared by every run

    def _framed(self, action: RunAction, body: Callable[[], RunOutcome]) -> RunResult:
        self.registry.validate(self.plan)
        self.journal.record_plan(self.plan)
        with self.journal.lock(self.op), self.cluster_lock(self.plan) as held, self.interrupt:
            # a lock that can be lost (an etcd lease) is checked before every step
            self.lock_check = getattr(held, "check", None)
            self.run_id = self.journal.start_run(self.op, action)
            try:
                outcome = body()
            except KubehaError as e:
                self.journal.finish_run(self.run_id, _RUN_OUTCOMES.get(type(e), RunOutcome.FAILED), describe(e))
                raise
            except KeyboardInterrupt:
                self.journal.finish_run(self.run_id, RunOutcome.INTERRUPTED, "interrupted")
                raise OperationInterrupted(self.op, f"at step {self.current.id if self.current else '-'}") from None
            except BaseException as e:
                self.journal.finish_run(self.run_id, RunOutcome.FAILED, describe(e))
                raise
            self.journal.finish_run(self.run_id, outcome)
        return RunResult(self.op, outcome, dict(self.outcomes))

    def _progress(self, event: str, step: Step | None, message: str = "") -> None:
        index = self.plan.steps.index(step) + 1 if step else 0
        self.on_progress(Progress(self.op, event, step, index, len(self.plan.steps), message))

    def _context(self, step: Step, backups: list[str] | None = None) -> StepContext:
        return StepContext(self.plan, step, self.view_factory(), self.cluster, backups if backups is not None else [])

    @contextlib.contextmanager
    def _record(self, step: Step) -> Iterator[int]:
        """A journal row for an attempt at ``step``; one a Ctrl-C cuts short says so."""
        record_id = self.journal.start_step(self.run_id, self.op, step.id)
        try:
            yield record_id
        except KeyboardInterrupt:
            self._finish(record_id, step, StepOutcome.INTERRUPTED, message="interrupted during the step")
            raise

    def _finish(self, record_id: int, step: Step, outcome: StepOutcome, *, retries: int = 0,
                message: str = "", backups: list[str] | None = None) -> None:
        self.journal.finish_step(record_id, outcome, retries=retries, message=message, backups=backups or [])
        self.outcomes[step.id] = outcome
        self._progress(outcome.value, step, message)

    def _between_steps(self, step: Step, doing: str) -> None:
        self.current = step
        if self.lock_check is not None:
            self.lock_check()
        # a journal deleted under the run was written back; whatever removed it may strike again
        written_back = self.journal.check_on_disk()
        if written_back is not None:
            raise JournalWrittenBack(self.op, step.id, *map(str, written_back))
        if self.interrupt.requested:
            raise OperationInterrupted(self.op, f"before {doing} step {step.id}")

    # -- apply and resume

    def apply(self, action: RunAction, inventory_digest: str | None) -> RunResult:
        if inventory_digest is not None and inventory_digest != self.plan.inventory_digest:
            raise PlanError(f"the inventory changed since plan {self.op} was made; make a new plan")
        return self._framed(action, self._apply_steps)

    def _apply_steps(self) -> RunOutcome:
        for step in self.plan.steps:
            self._between_steps(step, "running")
            self._apply_step(step, self.registry.kind(step.kind))
        return RunOutcome.DONE

    def _apply_step(self, step: Step, kind: StepKind) -> None:
        self._progress("checking", step)
        ctx = self._context(step)
        try:
            done = kind.is_done(ctx)
        except Exception as e:  # a look that failed (a host unreachable) decides nothing: as a check that cannot judge
            self._refuse(step, [f"whether it is done already: could not look: {describe(e)}"])
        if done:
            with self._record(step) as record_id:
                self._finish(record_id, step, StepOutcome.SKIPPED_ALREADY_DONE, message="already done on the cluster")
            return
        reasons = self.registry.reasons(step, kind, ctx)
        if reasons:
            self._refuse(step, reasons)
        with self._record(step) as record_id:
            observed = getattr(ctx.view, "observed", None)  # what the look saw, for `kubeha audit`
            if observed is not None:
                self.journal.record_observation(record_id, observed())
            attempt = _Attempt()
            try:
                self._carry_out(step, kind, ctx, attempt)
            except Exception as e:
                outcome, cause = self._undo_failed(step, kind, ctx.backups, describe(e))
                self._finish(record_id, step, outcome, retries=attempt.retries, message=cause, backups=ctx.backups)
                raise StepFailed(self.op, step.id, cause, rolled_back=outcome is StepOutcome.ROLLED_BACK) from e
            self._finish(record_id, step, StepOutcome.DONE, retries=attempt.retries, backups=ctx.backups)

    def _refuse(self, step: Step, reasons: list[str]) -> NoReturn:
        with self._record(step) as record_id:
            self._finish(record_id, step, StepOutcome.REFUSED, message="; ".join(reasons))
        raise EngineRefused(self.op, step.id, reasons)

    def _carry_out(self, step: Step, kind: StepKind, ctx: StepContext, attempt: _Attempt) -> None:
        """Apply and verify, trying again on the kind's retryable errors."""
        while True:
            try:
                # After a retryable error the step may have got through after all: look first.
                if attempt.retries == 0 or not kind.is_done(ctx):
                    self._progress("applying", step)
                    kind.apply(ctx)
                ctx = self._context(step, ctx.backups)
                self._progress("verifying", step)
                kind.verify(ctx)
                return
            except kind.retryable as e:
                if attempt.retries >= kind.retry_budget:
                    raise
                attempt.retries += 1
                self._progress("retrying", step, f"retry {attempt.retries} of {kind.retry_budget}: {describe(e)}")
                time.sleep(kind.retry_delay_seconds)
                ctx = self._context(step, ctx.backups)

    def _undo_failed(self, step: Step, kind: StepKind, backups: list[str], cause: str) -> tuple[StepOutcome, str]:
        if not step.reversible:
            return StepOutcome.FAILED, f"{cause}; this step cannot be undone automatically"
        self._progress("rolling back", step, cause)
        try:
            kind.rollback(self._context(step, backups))
        except Exception as e:
            return StepOutcome.FAILED, f"{cause}; its rollback failed too: {describe(e)}"
        return StepOutcome.ROLLED_BACK, cause

    # -- rollback

    def rollback(self) -> RunResult:
        return self._framed(RunAction.ROLLBACK, self._rollback_steps)

    def _rollback_steps(self) -> RunOutcome:
        todo = [step for step in steps_to_undo(self.plan, self.journal.steps(self.op))
                if not self.registry.kind(step.kind).leaves_nothing_to_undo(step)]
        irreversible = [step.id for step in todo if not step.reversible]
        for step in todo:
            self._between_steps(step, "undoing")
            with self._record(step) as record_id:
                if not step.reversible:
                    reason = (f"it cannot be undone automatically (steps that cannot: {', '.join(irreversible)}); "
                              f"undo it by hand as the plan's rollback notes say")
                    self._finish(record_id, step, StepOutcome.REFUSED, message=reason)
                    raise RollbackStopped(self.op, step.id, reason)
                self._undo(step, self.registry.kind(step.kind), record_id)
        return RunOutcome.ROLLED_BACK

    def _undo(self, step: Step, kind: StepKind, record_id: int) -> None:
        self._progress("rolling back", step)
        ctx = self._context(step)
        try:
            kind.rollback(ctx)
            # Undone means the cluster no longer shows the step's effect.
            if kind.is_done(self._context(step, ctx.backups)):
                raise StepNotVerified("its effect is still there after the rollback")
        except Exception as e:
            reason = f"{describe(e)}; after fixing it run {rollback_command(self.op)} again"
            self._finish(record_id, step, StepOutcome.FAILED, message=reason, backups=ctx.backups)
            raise RollbackStopped(self.op, step.id, reason) from e
        self._finish(record_id, step, StepOutcome.ROLLED_BACK, message="undone on request", backups=ctx.backups)
