"""Running the plan simulator on the cluster as it is now: its model read once, then the
plan played through it (``kubeha plan ... --verify`` and `kubeha apply` before the first step)."""

from __future__ import annotations

from kubeha.access import ClusterAccess
from kubeha.operations.etcd import read_facts
from kubeha.operations.etcd_plan import MembershipChange
from kubeha.operations.simulator import StepVerdict, model_from_facts, simulate, violations
from kubeha.plan import Plan, PlanError


def verify_plan(access: ClusterAccess, plan: Plan) -> list[StepVerdict]:
    cluster = access.cluster
    return simulate(plan, cluster, model_from_facts(cluster, read_facts(access, MembershipChange())))


def refuse_unsafe(plan: Plan, verdicts: list[StepVerdict]) -> None:
    """PlanError naming every rule the plan would break, and where."""
    broken = violations(verdicts)
    if broken:
        raise PlanError(f"plan {plan.operation_id} would break a safety rule: " + "; ".join(broken))


__all__ = ["refuse_unsafe", "verify_plan"]
