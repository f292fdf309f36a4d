"""An independent check of a plan, before anything runs: a small model of the control plane
and what each step kind does to it (pure; no host is asked).

The safety checks of the engine look at the live cluster before each step; this looks at
the plan alone, step by step, both *during* a step (what is down or out while it runs) and
*after* it, and names every step that would break a rule: etcd without a healthy voting
majority, two learners, the leader removed, no apiserver ready behind the load balancers,
a client reading etcd only from members that are no longer served. A step that would lose
quorum if one more member failed while it runs is a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from kubeha.etcd.quorum import quorum
from kubeha.model import Cluster
from kubeha.operations.etcd_plan import CALICO, EtcdFacts, live_member
from kubeha.plan import Plan, Step

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# the step kinds whose effect the model knows; any other kind leaves it as it is
MODELLED_KINDS = frozenset({
    "etcd-snapshot", "etcd-add-member", "etcd-start-member", "etcd-promote-member", "etcd-move-leader",
    "etcd-remove-member", "etcd-stop-member", "apiserver-etcd-servers", "calico-etcd-endpoints", "inventory-update",
    "restart-component", "master-files", "master-files-removed", "lb-server", "lb-rotation", "master-component", "master-node",
})


@dataclass(frozen=True)
class ControlPlaneModel:
    """The control plane as far as the rules need it; members and consumers by host name."""

    voters: frozenset[str]
    learners: frozenset[str] = frozenset()
    serving: frozenset[str] = frozenset()  # members whose etcd process serves
    leader: str | None = None
    readers: Mapping[str, frozenset[str]] = field(default_factory=dict)  # consumer -> members it reads
    in_lbs: frozenset[str] = frozenset()  # masters whose apiserver is in every load balancer
    masters: frozenset[str] = frozenset()

    @property
    def healthy_voters(self) -> frozenset[str]:
        return self.voters & self.serving

    def describe(self) -> str:
        voters = ", ".join(sorted(self.voters))
        learners = f"; learners {', '.join(sorted(self.learners))}" if self.learners else ""
        return (f"voters {voters} ({len(self.healthy_voters)} healthy, quorum {quorum(len(self.voters))}){learners}; "
                f"leader {self.leader or 'none'}; apiservers in the LBs: {', '.join(sorted(self.in_lbs)) or 'none'}")


@dataclass(frozen=True)
class StepVerdict:
    step: str
    during: ControlPlaneModel
    after: ControlPlaneModel
    violations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _hosts_named(urls: Sequence[str], consumer: str | None, cluster: Cluster) -> frozenset[str]:
    """The hosts ``urls`` (client or peer) reach; a loopback URL is the consumer's own host."""
    by_address = {str(h.address): h.name for h in cluster.hosts}
    named = set()
    for url in urls:
        address = urlsplit(url).hostname or ""
        if address in _LOOPBACK and consumer is not None:
            named.add(consumer)
        elif address in by_address:
            named.add(by_address[address])
    return frozenset(named)


def model_from_facts(cluster: Cluster, facts: EtcdFacts) -> ControlPlaneModel:
    """The model of the cluster as planning saw it."""
    members = {h.name: m for h in cluster.hosts if (m := live_member(facts.members, cluster, h)) is not None}
    sick = {reason.split(":")[0] for reason in facts.unhealthy}
    readers = {master: _hosts_named(urls, master, cluster) for master, urls in facts.apiserver_etcd_servers.items()}
    if facts.calico_endpoints:
        readers[CALICO] = _hosts_named(facts.calico_endpoints, None, cluster)
    masters = frozenset(h.name for h in cluster.masters)
    return ControlPlaneModel(
        voters=frozenset(h for h, m in members.items() if not m.is_learner),
        learners=frozenset(h for h, m in members.items() if m.is_learner),
        serving=frozenset(h for h, m in members.items() if m.client_urls and m.name not in sick and h not in sick),
        leader=next((h for h, m in members.items() if m.id == facts.leader_id), None),
        readers=readers, in_lbs=masters, masters=masters)


def _members(model: ControlPlaneModel) -> frozenset[str]:
    return model.voters | model.learners


def effect(model: ControlPlaneModel, step: Step, cluster: Cluster) -> tuple[ControlPlaneModel, ControlPlaneModel]:
    """The model while ``step`` runs and after it."""
    args = step.arguments
    host = str(args.get("host", ""))
    kind = step.kind
    if kind == "etcd-add-member":
        learner = bool(args.get("learner", True))
        after = replace(model, learners=model.learners | {host} if learner else model.learners,
                        voters=model.voters if learner else model.voters | {host})
        return after, after
    if kind == "etcd-start-member":
        after = replace(model, serving=model.serving | {host})
        return after, after
    if kind == "etcd-promote-member":
        after = replace(model, learners=model.learners - {host}, voters=model.voters | {host})
        return after, after
    if kind == "etcd-move-leader":
        if model.leader != host:
            return model, model
        prefer = _hosts_named([str(u) for u in args.get("to_peer_urls") or []], None, cluster)  # type: ignore[union-attr]
        candidates = sorted(model.healthy_voters - {host}, key=lambda h: h not in prefer)
        after = replace(model, leader=candidates[0] if candidates else None)
        return after, after
    if kind == "etcd-remove-member":
        after = replace(model, voters=model.voters - {host}, learners=model.learners - {host},
                        leader=None if model.leader == host else model.leader)
        return after, after
    if kind == "etcd-stop-member":
        after = replace(model, serving=model.serving - {host})
        return after, after
    if kind == "apiserver-etcd-servers":
        during = replace(model, in_lbs=model.in_lbs - {host})
        readers = {**model.readers, host: _hosts_named([str(u) for u in args["etcd_servers"]], host, cluster)}  # type: ignore[union-attr]
        return during, replace(model, readers=readers)
    if kind == "calico-etcd-endpoints":
        readers = {**model.readers, CALICO: _hosts_named([str(u) for u in args["etcd_servers"]], None, cluster)}  # type: ignore[union-attr]
        after = replace(model, readers=readers)
        return after, after
    if kind == "restart-component":
        if args.get("component") == "etcd" and model.leader == host:  # the kind moves leadership off first
            model = effect(model, step.model_copy(update={"kind": "etcd-move-leader"}), cluster)[1]
        during = model
        if args.get("drain"):
            during = replace(during, in_lbs=during.in_lbs - {host})
        if args.get("component") == "etcd":
            during = replace(during, serving=during.serving - {host})
        return during, model
    if kind == "lb-rotation":
        after = replace(model, in_lbs=model.in_lbs | {host} if args.get("into") else model.in_lbs - {host})
        return (model if args.get("into") else after), after
    if kind == "master-component" and args.get("component") == "kube-apiserver":
        if args.get("start"):
            named = _hosts_named([str(u) for u in args.get("etcd_servers") or []], host, cluster)  # type: ignore[union-attr]
            after = replace(model, masters=model.masters | {host}, readers={**model.readers, host: named})
        else:
            after = replace(model, masters=model.masters - {host}, in_lbs=model.in_lbs - {host},
                            readers={k: v for k, v in model.readers.items() if k != host})
        return after, after
    return model, model  # snapshot, files, configs, kubelet, inventory: nothing the rules look at


def _judge(model: ControlPlaneModel, step: Step, before: ControlPlaneModel, when: str) -> tuple[list[str], list[str]]:
    violations, warnings = [], []
    healthy, needed = len(model.healthy_voters), quorum(len(model.voters))
    if healthy < needed:
        violations.append(f"{when}: etcd has {healthy} healthy of {len(model.voters)} voters, below the quorum "
                          f"of {needed}")
    elif model.voters and healthy - 1 < needed:
        warnings.append(f"{when}: one more member failing would lose quorum ({healthy} healthy of "
                        f"{len(model.voters)} voters)")
    if len(model.learners) > 1:
        violations.append(f"{when}: {len(model.learners)} learners ({', '.join(sorted(model.learners))})")
    if model.leader is not None and model.leader not in model.serving:
        violations.append(f"{when}: the leader {model.leader} is down: move leadership off it first")
    if before.leader is not None and model.leader is None:
        violations.append(f"{when}: the leader {before.leader} is removed without leadership moved off it")
    if model.masters and not model.in_lbs:
        violations.append(f"{when}: no apiserver is ready behind the load balancers")
    for consumer, members in sorted(model.readers.items()):
        serving_apiserver = consumer == CALICO or consumer in model.in_lbs
        if serving_apiserver and members and not members & model.serving & _members(model):
            violations.append(f"{when}: {consumer} reads etcd only from {', '.join(sorted(members))}, "
                              "no longer served")
    return violations, warnings


def simulate(plan: Plan, cluster: Cluster, start: ControlPlaneModel) -> list[StepVerdict]:
    """Each step's model during and after it, with the rules it would break."""
    verdicts, model = [], start
    for step in plan.steps:
        during, after = effect(model, step, cluster)
        v1, w1 = _judge(during, step, model, "during")
        v2, w2 = _judge(after, step, model, "after")
        verdicts.append(StepVerdict(step.id, during, after, tuple(dict.fromkeys(v1 + v2)), tuple(dict.fromkeys(w1 + w2))))
        model = after
    if verdicts:  # when the plan is done, no client may still name a member the plan removed
        stale = [f"when the plan is done, {consumer} still names {', '.join(sorted(gone))}, no longer served"
                 for consumer, members in sorted(model.readers.items())
                 if (gone := members & (_members(start) - _members(model)))]
        last = verdicts[-1]
        verdicts[-1] = replace(last, violations=last.violations + tuple(stale))
    return verdicts


def models(plan: Plan) -> bool:
    """Whether the simulator knows what any of the plan's steps does."""
    return any(step.kind in MODELLED_KINDS for step in plan.steps)


def violations(verdicts: Sequence[StepVerdict]) -> list[str]:
    return [f"{v.step}: {why}" for v in verdicts for why in v.violations]


__all__ = ["MODELLED_KINDS", "ControlPlaneModel", "StepVerdict", "effect", "model_from_facts", "models", "simulate",
           "violations"]
