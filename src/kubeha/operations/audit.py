"""`kubeha audit`: a real run's journal played through the simulator's model (pure).

Before each step it carried out, the engine stored what its fresh look saw (etcd's voters,
learners and healthy members; where the step's checks read them, the apiservers in every
load balancer and the VIP's holders). The audit walks the plan: each look is compared with
the model of the cluster after the steps before it, and the first step whose look differs
names the divergence. A part of the model is compared from the first look that has it on
(a run's first steps may not have read the load balancers). Not compared: which member
leads (etcd may elect another at any time), and the VIP's holder in a plan that changes the
VIP (a look reads the inventory's VIP of that moment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubeha.model import Cluster
from kubeha.operations.simulator import ControlPlaneModel, effect
from kubeha.plan import Plan, StepOutcome, StepRecord

_CARRIED_OUT = (StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE)


@dataclass(frozen=True)
class Divergence:
    step: str
    differences: tuple[str, ...]  # "voters: the model has a, b, c; the cluster had a, b"


@dataclass(frozen=True)
class AuditResult:
    compared: int  # steps whose look was compared with the model
    divergence: Divergence | None
    stopped_at: str | None  # the first step the journal does not show done: the audit ends there

    def describe(self) -> str:
        if self.divergence is not None:
            return (f"diverged at step {self.divergence.step}: {'; '.join(self.divergence.differences)} "
                    f"({self.compared} steps agreed before it)")
        ended = f"; the run has not carried out {self.stopped_at} yet" if self.stopped_at else ""
        return f"no divergence: {self.compared} steps' looks agreed with the model{ended}"


def _names(value: Any) -> frozenset[str]:
    return frozenset(str(v) for v in value or ())


def _modelled(model: ControlPlaneModel, field: str, vip: str | None) -> frozenset[str]:
    if field == "voters":
        return model.voters
    if field == "learners":
        return model.learners
    if field == "healthy":
        return model.serving & (model.voters | model.learners)
    if field == "in_lbs":
        return model.in_lbs
    holder = model.vips.get(vip) if vip else None
    return frozenset([holder]) if holder else frozenset()


def _adopt(model: ControlPlaneModel, field: str, seen: frozenset[str], vip: str | None,
           cluster: Cluster) -> ControlPlaneModel:
    """``model`` with ``field`` taken from a look (the first time a look has it)."""
    if field == "voters":
        return replace(model, voters=seen)
    if field == "learners":
        return replace(model, learners=seen)
    if field == "healthy":
        return replace(model, serving=seen)
    if field == "in_lbs":
        return replace(model, in_lbs=seen, masters=model.masters | seen)
    holder = min(seen) if seen else None
    running = model.lb_running | seen | {h.name for h in cluster.lb_hosts}  # where a handoff may go
    return replace(model, vips={**model.vips, vip: holder}, lb_running=running) if vip else model


def _last_looks(records: Sequence[StepRecord], looks: Mapping[int, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each step's latest look: the state just before the attempt that settled it."""
    return {r.step_id: looks[r.record_id] for r in records if r.record_id in looks}


def audit(plan: Plan, cluster: Cluster, records: Sequence[StepRecord],
          looks: Mapping[int, Mapping[str, Any]]) -> AuditResult:
    """Compare each step's look with the model after the steps before it; ``cluster`` is the
    inventory's (hosts do not change addresses during a run)."""
    settled = {r.step_id: r.outcome for r in records}
    by_step = _last_looks(records, looks)
    changes_vip = any(step.kind == "lb-vips" for step in plan.steps)
    vip = str(cluster.vip.address) if cluster.vip is not None else None
    fields = ["voters", "learners", "healthy", "in_lbs"] + ([] if changes_vip else ["vip_holders"])
    model, known, compared = ControlPlaneModel(voters=frozenset()), set(), 0
    for step in plan.steps:
        look = by_step.get(step.id)
        if look is not None:
            differences = []
            for field in fields:
                if field not in look or (field == "vip_holders" and vip is None):
                    continue
                seen = _names(look[field])
                if field not in known:
                    model = _adopt(model, field, seen, vip, cluster)
                    known.add(field)
                elif seen != (modelled := _modelled(model, field, vip)):
                    differences.append(f"{field}: the model has {', '.join(sorted(modelled)) or 'none'}; "
                                       f"the cluster had {', '.join(sorted(seen)) or 'none'}")
            if differences:
                return AuditResult(compared, Divergence(step.id, tuple(differences)), None)
            compared += 1
        if settled.get(step.id) not in _CARRIED_OUT:
            return AuditResult(compared, None, step.id)
        model = effect(model, step, cluster)[1]
    return AuditResult(compared, None, None)


__all__ = ["AuditResult", "Divergence", "audit"]
