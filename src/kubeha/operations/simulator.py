"""An independent check of a plan, before anything runs: a small model of the control plane
and what each step kind does to it (pure; no host is asked).

The safety checks of the engine look at the live cluster before each step; this looks at
the plan alone, step by step, both *during* a step (what is down or out while it runs) and
*after* it, and names every step that would break a rule: etcd without a healthy voting
majority, two learners, the leader removed, no apiserver ready behind the load balancers,
a client reading etcd only from members that are no longer served, a VIP without a
holder, a client of the API naming an address nothing serves, an apiserver serving a cert
without an address its clients use. A step that would lose quorum if one more member
failed while it runs is a warning.

What the API side starts from (who holds each VIP, what each node's kubelet and kube-proxy
and each master's kubeconfigs name) is ``ApiFacts``, read before the run; without them the
VIP is taken to be on the first LB host and no client is judged. Certs are known only by
what the plan does to them: an address the plan starts to serve (a new VIP) is in no cert
until a step reissues one with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from kubeha.etcd.quorum import quorum
from kubeha.model import Cluster, Role
from kubeha.operations.etcd_plan import CALICO, EtcdFacts, live_member
from kubeha.plan import Plan, Step

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# the step kinds that change who serves the API, under which cert, or what its clients name:
# a plan with one of them needs ApiFacts to be judged on its clients
CLIENT_KINDS = frozenset({
    "lb-vips", "lb-server", "master-node", "master-component", "apiserver-sans", "node-kubeconfig-server",
    "kube-proxy-configmap-server", "control-plane-kubeconfig-server",
})
KUBE_PROXY_CONFIGMAP = "ConfigMap kube-system/kube-proxy"
# the step kinds whose effect the model knows; any other kind leaves it as it is
MODELLED_KINDS = frozenset({
    "etcd-snapshot", "etcd-add-member", "etcd-start-member", "etcd-promote-member", "etcd-move-leader",
    "etcd-remove-member", "etcd-stop-member", "apiserver-etcd-servers", "calico-etcd-endpoints", "inventory-update",
    "restart-component", "master-files", "master-files-removed", "lb-server", "lb-rotation", "master-component", "master-node",
    *CLIENT_KINDS,
})


@dataclass(frozen=True)
class ApiFacts:
    """The API side as read before the run (addresses and URLs as the files have them)."""

    vip_holders: Mapping[str, str | None] = field(default_factory=dict)  # VIP address -> the LB host holding it
    nodes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # node host -> its kubelet's and kube-proxy's servers
    control_planes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # master -> its kubeconfigs' servers
    kube_proxy_configmap: tuple[str, ...] | None = None  # the servers of kube-system/kube-proxy; None: absent


@dataclass(frozen=True)
class ControlPlaneModel:
    """The control plane as far as the rules need it; members, consumers and hosts by host name."""

    voters: frozenset[str]
    learners: frozenset[str] = frozenset()
    serving: frozenset[str] = frozenset()  # members whose etcd process serves
    leader: str | None = None
    readers: Mapping[str, frozenset[str]] = field(default_factory=dict)  # consumer -> members it reads
    in_lbs: frozenset[str] = frozenset()  # masters whose apiserver is in every load balancer
    masters: frozenset[str] = frozenset()  # masters whose apiserver runs
    lb_running: frozenset[str] = frozenset()  # LB hosts running keepalived and haproxy
    vips: Mapping[str, str | None] = field(default_factory=dict)  # VIP served -> the host holding it
    retired: frozenset[str] = frozenset()  # VIPs the plan stopped serving
    clients: Mapping[str, frozenset[str]] = field(default_factory=dict)  # "node worker1" -> addresses it names
    cert_lacks: Mapping[str, frozenset[str]] = field(default_factory=dict)  # master -> addresses its cert file lacks
    served_lacks: Mapping[str, frozenset[str]] = field(default_factory=dict)  # ... the cert its apiserver serves lacks

    @property
    def healthy_voters(self) -> frozenset[str]:
        return self.voters & self.serving

    def describe(self) -> str:
        voters = ", ".join(sorted(self.voters))
        learners = f"; learners {', '.join(sorted(self.learners))}" if self.learners else ""
        vips = "".join(f"; VIP {a} on {h or 'no host'}" for a, h in sorted(self.vips.items()))
        lacking = ", ".join(f"{m} without {', '.join(sorted(self.served_lacks[m]))}" for m in sorted(self.masters)
                            if self.served_lacks.get(m))
        return (f"voters {voters} ({len(self.healthy_voters)} healthy, quorum {quorum(len(self.voters))}){learners}; "
                f"leader {self.leader or 'none'}; apiservers in the LBs: {', '.join(sorted(self.in_lbs)) or 'none'}"
                + vips + (f"; certs served: {lacking}" if lacking else ""))


@dataclass(frozen=True)
class StepVerdict:
    step: str
    during: ControlPlaneModel
    after: ControlPlaneModel
    violations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    disappearing: tuple[str, ...] = ()  # "address (its clients)": named after the step, unserved by a later one

    def describe(self) -> str:
        gone = f"; named but served no more after a later step: {'; '.join(self.disappearing)}" \
            if self.disappearing else ""
        return self.after.describe() + gone


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


def _addresses(urls: Sequence[str]) -> frozenset[str]:
    """The addresses ``urls`` name; every loopback spelling as 127.0.0.1 (a node-local proxy)."""
    hosts = {urlsplit(url).hostname or "" for url in urls}
    return frozenset(_LOOPBACK[0] if h in _LOOPBACK else h for h in hosts if h)


def _node(host: str) -> str:
    return f"node {host}"


def _control_plane(host: str) -> str:
    return f"control plane of {host}"


def _first_lb(running: frozenset[str], cluster: Cluster) -> str | None:
    """The LB host keepalived makes a VIP's holder: the first running one, by the inventory's order."""
    return next((h.name for h in cluster.hosts if h.name in running), None)


def _clients(api: ApiFacts) -> dict[str, frozenset[str]]:
    clients = {_node(n): _addresses(urls) for n, urls in api.nodes.items()}
    clients.update({_control_plane(m): _addresses(urls) for m, urls in api.control_planes.items()})
    if api.kube_proxy_configmap:
        clients[KUBE_PROXY_CONFIGMAP] = _addresses(api.kube_proxy_configmap)
    return clients


def model_from_facts(cluster: Cluster, facts: EtcdFacts, api: ApiFacts | None = None) -> ControlPlaneModel:
    """The model of the cluster as planning saw it."""
    members = {h.name: m for h in cluster.hosts if (m := live_member(facts.members, cluster, h)) is not None}
    sick = {reason.split(":")[0] for reason in facts.unhealthy}
    readers = {master: _hosts_named(urls, master, cluster) for master, urls in facts.apiserver_etcd_servers.items()}
    if facts.calico_endpoints:
        readers[CALICO] = _hosts_named(facts.calico_endpoints, None, cluster)
    masters = frozenset(h.name for h in cluster.masters)
    lbs = frozenset(h.name for h in cluster.lb_hosts) if cluster.vip is not None else frozenset()
    holders = {str(v.address): (api.vip_holders.get(str(v.address)) if api else _first_lb(lbs, cluster))
               for v in cluster.vips}
    return ControlPlaneModel(
        voters=frozenset(h for h, m in members.items() if not m.is_learner),
        learners=frozenset(h for h, m in members.items() if m.is_learner),
        serving=frozenset(h for h, m in members.items() if m.client_urls and m.name not in sick and h not in sick),
        leader=next((h for h, m in members.items() if m.id == facts.leader_id), None),
        readers=readers, in_lbs=masters, masters=masters, lb_running=lbs, vips=holders,
        clients=_clients(api) if api else {})


def _members(model: ControlPlaneModel) -> frozenset[str]:
    return model.voters | model.learners


def _copied(model: ControlPlaneModel, client: Callable[[str], str], source: str, host: str,
            cluster: Cluster, retargeted: bool = True) -> dict[str, frozenset[str]]:
    """The clients with ``host``'s naming what the same client of ``source`` names,
    ``source``'s address replaced by ``host``'s when ``retargeted`` (a new master's files
    are copied so; its kubelet's server is not: its own apiserver does not run yet)."""
    copied = model.clients.get(client(source)) if source else None
    if copied is None:
        return dict(model.clients)
    old, new = str(cluster.host(source).address), str(cluster.host(host).address)
    return {**model.clients, client(host): frozenset(new if a == old and retargeted else a for a in copied)}


def _without(clients: Mapping[str, frozenset[str]], key: str) -> dict[str, frozenset[str]]:
    return {k: v for k, v in clients.items() if k != key}


def _restarted_apiserver(model: ControlPlaneModel, host: str) -> ControlPlaneModel:
    """A restarted apiserver serves the cert its file has now."""
    return replace(model, served_lacks={**model.served_lacks, host: model.cert_lacks.get(host, frozenset())})


def _api_effect(model: ControlPlaneModel, step: Step, cluster: Cluster) -> tuple[ControlPlaneModel, ControlPlaneModel]:
    """The effect of the step kinds that serve the API, issue its certs or point its clients."""
    args = step.arguments
    host = str(args.get("host", ""))
    kind = step.kind
    if kind == "lb-vips":
        wanted = [str(v["address"]) for v in args["vips"]]  # type: ignore[index, union-attr]
        new = [a for a in wanted if a not in model.vips]
        first = _first_lb(model.lb_running, cluster)
        lacks = {m: model.cert_lacks.get(m, frozenset()) | set(new) for m in model.cert_lacks.keys() | model.masters}
        served = {m: model.served_lacks.get(m, frozenset()) | set(new) for m in lacks}
        after = replace(model, vips={a: model.vips.get(a, first) for a in wanted}, cert_lacks=lacks, served_lacks=served,
                        retired=(model.retired | (model.vips.keys() - set(wanted))) - set(wanted))
        # while the step runs, a VIP it retires is gone and one it adds is not held yet
        return replace(after, vips={a: h for a, h in after.vips.items() if a in model.vips}), after
    if kind == "lb-server":
        if cluster.vip is None or cluster.with_role(Role.LB):  # dedicated LB hosts: no master runs keepalived
            return model, model
        if Role.MASTER.value in (args.get("roles") or []):  # type: ignore[operator]
            after = replace(model, lb_running=model.lb_running | {host})
        else:  # its VIPs are handed to the first LB host staying before keepalived stops (make before break)
            running = model.lb_running - {host}
            heir = _first_lb(running, cluster)
            after = replace(model, lb_running=running,
                            vips={a: heir if h == host else h for a, h in model.vips.items()})
        return after, after
    if kind == "master-node":
        clients = (_copied(model, _node, str(args.get("source", "")), host, cluster, False) if args.get("start")
                   else _without(model.clients, _node(host)))
        after = replace(model, clients=clients)
        return after, after
    if kind == "master-component":  # the apiserver's own part is in effect()
        if args.get("component") == "kube-apiserver":
            after = _restarted_apiserver(model, host) if args.get("start") else model
        elif args.get("start"):
            after = replace(model, clients=_copied(model, _control_plane, str(args.get("source", "")), host,
                                                   cluster))
        else:
            after = replace(model, clients=_without(model.clients, _control_plane(host)))
        return after, after
    if kind == "master-files":  # its cert: the source's SANs, its own address for the source's
        after = replace(model, cert_lacks={**model.cert_lacks, host: model.cert_lacks.get(str(args["source"]), frozenset())})
        return after, after
    if kind == "apiserver-sans":
        added, removed = ({str(a) for a in args.get(name) or []} for name in ("add", "remove"))  # type: ignore[union-attr]
        after = replace(model, cert_lacks={**model.cert_lacks,
                                           host: (model.cert_lacks.get(host, frozenset()) - added) | removed})
        return after, after
    if kind == "node-kubeconfig-server":
        named = _addresses([str(args["server"])])
        nodes = [str(n["host"]) for n in args.get("nodes") or []]  # type: ignore[index, union-attr]
        after = replace(model, clients={**model.clients, **{_node(n): named for n in nodes}})
        return after, after
    if kind == "kube-proxy-configmap-server":
        after = replace(model, clients={**model.clients, KUBE_PROXY_CONFIGMAP: _addresses([str(args["server"])])})
        return after, after
    if kind == "control-plane-kubeconfig-server":
        key = _control_plane(host)
        old, new = _addresses([str(args["previous"])]), _addresses([str(args["server"])])
        if key not in model.clients:
            return model, model
        after = replace(model, clients={**model.clients, key: (model.clients[key] - old) | new})
        return after, after
    return model, model  # snapshot, files, configs, kubelet, inventory: nothing the rules look at


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
        return during, _restarted_apiserver(replace(model, readers=readers), host)
    if kind == "calico-etcd-endpoints":
        readers = {**model.readers, CALICO: _hosts_named([str(u) for u in args["etcd_servers"]], None, cluster)}  # type: ignore[union-attr]
        after = replace(model, readers=readers)
        return after, after
    if kind == "restart-component":
        if args.get("component") == "etcd" and model.leader == host and model.healthy_voters - {host}:
            # the kind moves leadership off first (a lone member leads again once back)
            model = effect(model, step.model_copy(update={"kind": "etcd-move-leader"}), cluster)[1]
        during = model
        if args.get("drain"):
            during = replace(during, in_lbs=during.in_lbs - {host})
        if args.get("component") == "etcd":
            during = replace(during, serving=during.serving - {host})
        return during, _restarted_apiserver(model, host) if args.get("component") == "kube-apiserver" else model
    if kind == "lb-rotation":
        after = replace(model, in_lbs=model.in_lbs | {host} if args.get("into") else model.in_lbs - {host})
        return (model if args.get("into") else after), after
    if kind == "master-component" and args.get("component") == "kube-apiserver":
        if args.get("start"):
            named = _hosts_named([str(u) for u in args.get("etcd_servers") or []], host, cluster)  # type: ignore[union-attr]
            model = replace(model, masters=model.masters | {host}, readers={**model.readers, host: named})
        else:
            model = replace(model, masters=model.masters - {host}, in_lbs=model.in_lbs - {host},
                            readers={k: v for k, v in model.readers.items() if k != host})
    return _api_effect(model, step, cluster)


def _serves(model: ControlPlaneModel, address: str, hosts: Mapping[str, str]) -> bool:
    """Whether something serves the API at ``address`` (``hosts``: address -> host name). An
    address the model does not know (an LB of its own) counts as served: the engine checks
    that it answers before anything is pointed at it."""
    if address in _LOOPBACK:
        return bool(model.in_lbs)  # each node's local proxy, while an apiserver is behind it
    if address in model.vips:
        return model.vips[address] is not None
    if address in model.retired:
        return False
    host = hosts.get(address)
    return host is None or host in model.masters or host in model.lb_running


def _api_judge(model: ControlPlaneModel, cluster: Cluster, when: str) -> list[str]:
    """The rules of the API side: every VIP held, every client's address served, every
    apiserver's cert naming the addresses its clients reach it by."""
    violations = [f"{when}: the VIP {address} has no holder" for address, holder in sorted(model.vips.items())
                  if holder is None or holder not in model.lb_running]
    hosts = {str(h.address): h.name for h in cluster.hosts}
    naming: dict[str, list[str]] = {}
    for client, addresses in sorted(model.clients.items()):
        for address in addresses:
            naming.setdefault(address, []).append(client)
    for address, clients in sorted(naming.items()):
        if not _serves(model, address, hosts):
            shown = ", ".join(clients[:5]) + (f" and {len(clients) - 5} more" if len(clients) > 5 else "")
            violations.append(f"{when}: {shown} name{'s' if len(clients) == 1 else ''} {address}, which nothing serves")
    # an address of a host that is not an LB host reaches that host's apiserver only; the
    # others (VIPs, LB hosts, node-local proxies, LBs of their own) reach every apiserver in the LBs
    direct = {str(h.address) for h in cluster.hosts if not h.has(Role.LB)}
    for master in sorted(model.masters):
        own = str(cluster.host(master).address)
        reaching = {a for a in naming if a == own or (master in model.in_lbs and a not in direct)}
        missing = model.served_lacks.get(master, frozenset()) & reaching
        if missing:
            violations.append(f"{when}: the apiserver of {master} serves a cert without {', '.join(sorted(missing))}, "
                              "which its clients use")
    return violations


def _judge(model: ControlPlaneModel, cluster: Cluster, before: ControlPlaneModel, when: str) -> tuple[list[str], list[str]]:
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
    return violations + _api_judge(model, cluster, when), warnings


def _disappearing(verdicts: Sequence[StepVerdict], cluster: Cluster) -> list[tuple[str, ...]]:
    """For each step: the addresses clients name after it that a later step leaves unserved,
    with their clients."""
    hosts = {str(h.address): h.name for h in cluster.hosts}
    named = {a for v in verdicts for addresses in v.after.clients.values() for a in addresses}
    found: list[tuple[str, ...]] = []
    later: set[str] = set()  # unserved during or after some later step
    for v in reversed(verdicts):
        said = []
        for address in sorted(later):
            if _serves(v.after, address, hosts):
                clients = sorted(c for c, addresses in v.after.clients.items() if address in addresses)
                if clients:
                    said.append(f"{address} ({', '.join(clients[:3])}{', ...' if len(clients) > 3 else ''})")
        found.append(tuple(said))
        later |= {a for a in named if not _serves(v.during, a, hosts) or not _serves(v.after, a, hosts)}
    return found[::-1]


def simulate(plan: Plan, cluster: Cluster, start: ControlPlaneModel) -> list[StepVerdict]:
    """Each step's model during and after it, with the rules it would break. A rule broken
    before the plan (a member down that an apiserver reads alone) is the cluster's, not the
    plan's: said once, as a warning of the first step."""
    already = {why.split(": ", 1)[1] for why in _judge(start, cluster, start, "before the plan")[0]}
    verdicts, model = [], start
    for step in plan.steps:
        during, after = effect(model, step, cluster)
        v1, w1 = _judge(during, cluster, model, "during")
        v2, w2 = _judge(after, cluster, model, "after")
        broken = tuple(why for why in dict.fromkeys(v1 + v2) if why.split(": ", 1)[1] not in already)
        verdicts.append(StepVerdict(step.id, during, after, broken, tuple(dict.fromkeys(w1 + w2))))
        model = after
    if verdicts and already:
        first = verdicts[0]
        verdicts[0] = replace(first, warnings=tuple(f"before the plan: {why}" for why in sorted(already)) + first.warnings)
    if verdicts:  # when the plan is done, no client may still name a member the plan removed
        stale = [f"when the plan is done, {consumer} still names {', '.join(sorted(gone))}, no longer served"
                 for consumer, members in sorted(model.readers.items())
                 if (gone := members & (_members(start) - _members(model)))]
        last = verdicts[-1]
        verdicts[-1] = replace(last, violations=last.violations + tuple(stale))
    return [replace(v, disappearing=d) for v, d in zip(verdicts, _disappearing(verdicts, cluster))]


def models(plan: Plan) -> bool:
    """Whether the simulator knows what any of the plan's steps does."""
    return any(step.kind in MODELLED_KINDS for step in plan.steps)


def touches_api(plan: Plan) -> bool:
    """Whether the plan changes who serves the API or what its clients name (it needs ApiFacts)."""
    return any(step.kind in CLIENT_KINDS for step in plan.steps)


def violations(verdicts: Sequence[StepVerdict]) -> list[str]:
    return [f"{v.step}: {why}" for v in verdicts for why in v.violations]


__all__ = ["CLIENT_KINDS", "MODELLED_KINDS", "ApiFacts", "ControlPlaneModel", "StepVerdict", "effect",
           "model_from_facts", "models", "simulate", "touches_api", "violations"]
