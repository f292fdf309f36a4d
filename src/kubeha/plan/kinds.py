"""What the engine runs: step kinds and safety checks, registered by name.

A plan names its steps' kinds and checks as strings; a ``Registry`` maps those names to
code. Operations (later parts) register their kinds and checks; the engine knows none of
them, and knows nothing of how the cluster is read: a check is a pure function of a
*view*, whatever the view factory handed to the engine returns (a snapshot object, a
dict). Each decision is made from one fresh view, so no two facts it rests on come from
different moments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kubeha.hosts import BackupSet
from kubeha.plan.errors import PlanError
from kubeha.plan.model import Plan, Step

# A safety check says why a step must not run now, or None when it may: from the view
# alone, or (registered with ``step_check``) from the view and the step it guards.
SafetyCheck = Callable[[Any], "str | None"]
StepSafetyCheck = Callable[[Any, Step], "str | None"]
ViewFactory = Callable[[], Any]


@dataclass
class StepContext:
    """What a step kind gets: its step, the plan, a fresh view, and what it acts through.

    ``cluster`` is whatever the caller gave the engine to act with (a ClusterAccess in
    production); the engine only passes it along. Backups a step takes are recorded with
    ``took_backup`` so the journal can say where they are.
    """

    plan: Plan
    step: Step
    view: Any
    cluster: Any
    backups: list[str] = field(default_factory=list)

    @property
    def backup_set(self) -> BackupSet:
        """The operation's backup set: one directory per host for every step of the operation."""
        return BackupSet(self.plan.operation_id)

    @property
    def step_backup_set(self) -> BackupSet:
        """This step's own backup set, so that its rollback restores only what it changed."""
        return step_backup_set(self.plan, self.step.id)

    def took_backup(self, host: str, backup: BackupSet | None = None) -> None:
        where = f"{host}:{(backup or self.backup_set).directory}"
        if where not in self.backups:
            self.backups.append(where)


def step_backup_set(plan: Plan, step_id: str) -> BackupSet:
    return BackupSet(f"{plan.operation_id}.{step_id}")


class StepKind(ABC):
    """How one kind of step is checked, recognised as done, carried out, verified and undone.

    ``retryable`` errors raised by ``apply`` or ``verify`` are tried again, up to
    ``retry_budget`` more times, ``retry_delay_seconds`` apart; the journal counts them.
    """

    name: ClassVar[str]
    retryable: ClassVar[tuple[type[Exception], ...]] = ()
    retry_budget: ClassVar[int] = 0
    retry_delay_seconds: ClassVar[float] = 1.0
    # a step that changes nothing a rollback should take back (a snapshot, a leadership
    # move): `kubeha rollback` passes over it
    nothing_to_undo: ClassVar[bool] = False

    def leaves_nothing_to_undo(self, step: Step) -> bool:
        """Whether `kubeha rollback` passes over ``step``: the kind's ``nothing_to_undo``,
        unless the kind tells by the step's arguments."""
        return self.nothing_to_undo

    def precheck(self, ctx: StepContext) -> list[str]:
        """Reasons, beyond the plan's named safety checks, not to run this step now."""
        return []

    @abstractmethod
    def is_done(self, ctx: StepContext) -> bool:
        """Whether the cluster already shows this step's effect (so resume skips it)."""

    @abstractmethod
    def apply(self, ctx: StepContext) -> None: ...

    @abstractmethod
    def verify(self, ctx: StepContext) -> None:
        """Raise (StepNotVerified, one line) when the step's effect is not there."""

    @abstractmethod
    def rollback(self, ctx: StepContext) -> None:
        """Undo the step; also called after a failed ``apply``, so undo partial effects too."""


class Registry:
    def __init__(self) -> None:
        self._kinds: dict[str, StepKind] = {}
        self._checks: dict[str, StepSafetyCheck] = {}

    def add_kind(self, kind: StepKind) -> StepKind:
        if kind.name in self._kinds:
            raise ValueError(f"step kind {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind
        return kind

    def check(self, name: str) -> Callable[[SafetyCheck], SafetyCheck]:
        """Decorator registering a safety check ``(view) -> reason | None`` under ``name``."""

        def register(check: SafetyCheck) -> SafetyCheck:
            self._add_check(name, lambda view, step: check(view))
            return check

        return register

    def step_check(self, name: str) -> Callable[[StepSafetyCheck], StepSafetyCheck]:
        """Decorator registering a check ``(view, step) -> reason | None`` that judges the
        step it guards (its host, its member) under ``name``."""

        def register(check: StepSafetyCheck) -> StepSafetyCheck:
            self._add_check(name, check)
            return check

        return register

    def _add_check(self, name: str, check: StepSafetyCheck) -> None:
        if name in self._checks:
            raise ValueError(f"safety check {name!r} is registered twice")
        self._checks[name] = check

    def kind(self, name: str) -> StepKind:
        return self._kinds[name]

    def extended(self, *kinds: StepKind) -> Registry:
        """A new registry with this one's kinds and checks, and ``kinds``."""
        wider = Registry()
        wider._kinds, wider._checks = dict(self._kinds), dict(self._checks)
        for kind in kinds:
            wider.add_kind(kind)
        return wider

    def reasons(self, step: Step, kind: StepKind, ctx: StepContext) -> list[str]:
        """Every reason the step's named checks and its kind's precheck give on ``ctx.view``.

        A check that raises cannot vouch for safety, so its error counts as a reason.
        """
        judges: list[tuple[str, Callable[[], list[str]]]] = [
            (name, lambda check=self._checks[name]: [r for r in [check(ctx.view, step)] if r])
            for name in step.safety_checks]
        judges.append((f"{kind.name} precheck", lambda: kind.precheck(ctx)))
        reasons = []
        for name, judge in judges:
            try:
                reasons += [f"{name}: {reason}" for reason in judge()]
            except Exception as e:  # a check is foreign code to the engine: its failure is a refusal
                reasons.append(f"{name}: could not judge: {type(e).__name__}: {e}")
        return reasons

    def validate(self, plan: Plan) -> None:
        """Refuse a plan naming kinds or checks this registry does not know, all of them at once."""
        unknown = sorted(
            {f"step kind {step.kind!r}" for step in plan.steps if step.kind not in self._kinds}
            | {f"safety check {name!r}" for step in plan.steps for name in step.safety_checks
               if name not in self._checks})
        if unknown:
            raise PlanError(f"plan {plan.operation_id} names unknown {', '.join(unknown)}")
