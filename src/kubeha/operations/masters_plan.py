"""Planning ``add-master`` and ``remove-master`` (pure: no host is asked).

A new master is made from an existing one (the *source*) the way an operator copies a
master: its PKI (the CAs, the service-account key, the client certs), its kubeconfigs, its
kubelet files and its control-plane manifests or units, with the source's address and name
replaced by the new host's (not in the kubelet's and kube-proxy's servers: they run before the
new apiserver does, so they name what the source's name); its own apiserver cert is reissued with the new host's SANs and
its kubelet gets a client cert of its own. Then, one step at a time:

add: files -> every load balancer lists it, out of rotation -> kubelet started, Node
registered and marked like the source's (labels, taints, cordon) -> etcd member joined
(stacked etcd: learner, started, promoted) -> apiserver started and ready -> into rotation
everywhere -> other apiservers repointed at the new member -> controller-manager, scheduler
-> inventory.

remove: other consumers repointed off its member -> out of rotation everywhere -> scheduler,
controller-manager, apiserver stopped -> etcd member leaves (leadership moved off it) -> gone from every
load balancer's config -> kubelet stopped, Node deleted -> inventory (the host stays, with
no role).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from kubeha.errors import InputError
from kubeha.etcd.gateway import EtcdMember
from kubeha.model import Cluster, EtcdTopology, Host, Role
from kubeha.operations.components import APISERVER, CONTROLLER_MANAGER, ETCD, SCHEDULER, file_of
from kubeha.operations.etcd_plan import (
    CONSUMER_KINDS, ETCD_HEALTHY, LB_SPARE, VIP_HELD, EtcdFacts, MembershipChange, accept_later_values, client_url, cluster_after,
    etcd_servers_after, inventory_step, leads, membership_steps, refusals, refuse_non_names, snapshot_step,
    supports_learners,
)
from kubeha.operations.restart_plan import restart_step
from kubeha.plan import Change, ChangeKind, Plan, PlanError, Step
from kubeha.plan import inventory_digest as inventory_text_digest

COMPONENTS = (APISERVER, CONTROLLER_MANAGER, SCHEDULER)  # the order they start in
READY_TIMEOUT = 120.0


def retarget(text: str, source: Host, host: Host) -> str:
    """A file of master ``source`` as it must read on ``host``: ``source``'s address and
    name, where they stand as whole words, replaced by ``host``'s."""
    for old, new in ((str(source.address), str(host.address)), (source.name, host.name)):
        text = re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w-]|\.\w)", new, text)
    return text


def with_roles(cluster: Cluster, name: str, roles: Sequence[str]) -> Cluster:
    """``cluster`` with host ``name`` holding exactly ``roles``; etcd stacked while every
    member is a master (as discovery decides it)."""
    hosts = tuple(h.model_copy(update={"roles": frozenset(Role(r) for r in roles)}) if h.name == name else h
                  for h in cluster.hosts)
    stacked = all(h.has(Role.MASTER) for h in hosts if h.has(Role.ETCD))
    return cluster.model_copy(update={"hosts": hosts,
                                      "etcd_topology": EtcdTopology.STACKED if stacked else EtcdTopology.EXTERNAL})


def roles_after_add(cluster: Cluster, host: Host) -> tuple[str, ...]:
    """A new master of a stacked cluster runs an etcd member too, as `kubeadm join
    --control-plane` makes it; with external etcd it runs none."""
    roles = set(host.roles) | {Role.MASTER}
    if cluster.etcd_topology is EtcdTopology.STACKED:
        roles.add(Role.ETCD)
    return tuple(sorted(r.value for r in roles))


def roles_after_remove(host: Host) -> tuple[str, ...]:
    return tuple(sorted(r.value for r in host.roles - {Role.MASTER, Role.ETCD}))


def master_change(cluster: Cluster, name: str, adding: bool) -> tuple[Host, MembershipChange]:
    """The host and the etcd membership change that comes with adding or removing it as a
    master; InputError (one line) for a host that is not in the inventory or has the wrong role."""
    refuse_non_names([name])
    try:
        host = cluster.host(name)
    except KeyError:
        raise InputError(f"{name} is not a host of the inventory: add it to cluster.yaml first") from None
    if adding and host.has(Role.MASTER):
        raise InputError(f"{name} is a master already")
    if not adding and not host.has(Role.MASTER):
        raise InputError(f"{name} is not a master (masters: {', '.join(h.name for h in cluster.masters) or 'none'})")
    if not adding and (why := last_master(cluster, host)):
        raise InputError(why)
    if adding:
        joins = Role.ETCD.value in roles_after_add(cluster, host) and not host.has(Role.ETCD)
        return host, MembershipChange(adds=(host,) if joins else ())
    return host, MembershipChange(removes=(host,) if host.has(Role.ETCD) else ())


def last_master(cluster: Cluster, host: Host) -> str | None:
    """Why ``host`` cannot stop being a master: it is the only one."""
    if [m.name for m in cluster.masters] == [host.name]:
        return f"{host.name} is the last master: add another master first"
    return None


def source_master(cluster: Cluster, unreachable: Mapping[str, str], leaving: str | None = None) -> Host | None:
    """The master a new master is copied from: the first reachable one that stays."""
    return next((m for m in cluster.masters if m.name not in unreachable and m.name != leaving), None)


def master_refusals(cluster: Cluster, host: Host, adding: bool, change: MembershipChange,
                    facts: EtcdFacts, leader_elect: Mapping[str, str]) -> list[str]:
    """Every reason not to plan: etcd's (an even member count allowed: masters come and go
    one at a time), no other master to copy from or to keep serving, a component running
    without leader election (two would act at once)."""
    reasons = refusals(cluster, change, facts, even_ok=True)
    if source_master(cluster, facts.unreachable, None if adding else host.name) is None:
        reasons.append("no other master is reachable over SSH")
    if not adding:
        reasons += _vip_reasons(cluster, [host])
    return reasons + _leader_elect_reasons(leader_elect)


def _vip_reasons(cluster: Cluster, leaving: Sequence[Host]) -> list[str]:
    if cluster.vip is not None:
        return []
    return [f"cluster {cluster.name} has no VIP: its clients may name {', '.join(h.name for h in leaving)} directly"]


def _leader_elect_reasons(leader_elect: Mapping[str, str]) -> list[str]:
    return [f"{component} on {master} runs with --leader-elect={value}: a second one would act beside it; "
            "turn leader election on first" for (master, component), value in _by_pair(leader_elect).items()
            if value.lower() == "false"]


def _by_pair(leader_elect: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """``{"m1/kube-scheduler": "false"}`` -> ``{("m1", "kube-scheduler"): "false"}``."""
    return {tuple(key.split("/", 1)): value for key, value in leader_elect.items()}  # type: ignore[misc]


def _change(kind: ChangeKind, target: str, host: str | None, before: str | None, after: str | None) -> Change:
    return Change(kind=kind, target=target, host=host, before=before, after=after)


def _lb_targets(cluster: Cluster) -> list[Change]:
    lbs = [h.name for h in cluster.lb_hosts] if cluster.vip is not None else []
    return [_change(ChangeKind.FILE, str(cluster.paths.haproxy_cfg), lb, None, None) for lb in lbs]


def _files_step(cluster: Cluster, host: Host, source: Host, roles: Sequence[str], leaving: Sequence[Host]) -> Step:
    p = cluster.paths
    return Step(
        id=f"copy-master-files-{host.name}", kind="master-files",
        title=f"Copy the master files of {source.name} to {host.name} (PKI, kubeconfigs, kubelet), "
              "its apiserver cert and kubelet client cert issued anew",
        hosts=(host.name, source.name),
        changes=(_change(ChangeKind.CERT, f"{p.pki_dir}/*", host.name, None, f"as on {source.name}"),
                 _change(ChangeKind.CERT, str(p.apiserver.cert), host.name, None,
                         f"SANs of {source.name}'s, with {host.address} and {host.name} instead"
                         + (f", without {', '.join(h.name for h in leaving)}" if leaving else "")),
                 _change(ChangeKind.FILE, "admin, controller-manager, scheduler kubeconfigs", host.name, None,
                         f"as on {source.name}"),
                 _change(ChangeKind.FILE, str(p.kubelet_kubeconfig), host.name, None, f"system:node:{host.name}"),
                 _change(ChangeKind.FILE, "kubelet unit and config", host.name, None, f"as on {source.name}")),
        verification="every file is in place with its mode",
        rollback="every file restored from its backup (new ones removed)", estimated_seconds=5,
        arguments={"host": host.name, "source": source.name, "roles": list(roles),
                   "leaving": [h.name for h in leaving]})


def _remove_files_step(cluster: Cluster, host: Host, roles: Sequence[str]) -> Step:
    p = cluster.paths
    return Step(
        id=f"remove-master-files-{host.name}", kind="master-files-removed",
        title=f"Remove the master files of {host.name}: PKI (with the CA keys), kubeconfigs, kubelet, components",
        hosts=(host.name,),
        changes=(_change(ChangeKind.CERT, f"{p.pki_dir}/*", host.name, "present", None),
                 _change(ChangeKind.FILE, "kubeconfigs, kubelet files, component manifests or units, LB configs it "
                                          "no longer serves", host.name, "present", None)),
        verification="none of them is left",
        rollback="every file restored from the step's backup on the host", estimated_seconds=5,
        arguments={"host": host.name, "roles": list(roles)})


def _lb_config_step(cluster: Cluster, host: Host, roles: Sequence[str], adding: bool) -> Step:
    verb = "list" if adding else "no longer list"
    return Step(
        id=f"{'add' if adding else 'remove'}-lb-server-{host.name}", kind="lb-server",
        title=f"Make every load balancer {verb} the apiserver of {host.name}"
              + (" (out of rotation until it is ready)" if adding else ""),
        hosts=tuple(h.name for h in cluster.lb_hosts),
        changes=tuple(_lb_targets(cluster)) + (_change(ChangeKind.FILE, "node-local nginx.conf of every node", None,
                                                       None, f"{'with' if adding else 'without'} {host.name}"),),
        safety_checks=(VIP_HELD,),
        verification="each config lists the servers of the masters after the step; each service reloaded",
        rollback="every config restored and its service reloaded", estimated_seconds=10,
        arguments={"host": host.name, "roles": list(roles)})


def _rotation_step(cluster: Cluster, host: Host, roles: Sequence[str], into: bool) -> Step:
    return Step(
        id=f"{'into' if into else 'out-of'}-rotation-{host.name}", kind="lb-rotation",
        title=(f"Put the apiserver of {host.name} into every load balancer once it is ready" if into
               else f"Take the apiserver of {host.name} out of every load balancer"),
        hosts=(host.name,),
        changes=tuple(_change(ChangeKind.LB_BACKEND, f"kube-apiserver/{host.name}", lb.name,
                              "out" if into else "ready", "ready" if into else "out")
                      for lb in (cluster.lb_hosts if cluster.vip is not None else ())),
        safety_checks=(VIP_HELD,) if into else (LB_SPARE, VIP_HELD),
        verification=f"every load balancer {'sends' if into else 'sends no'} new connections to it",
        rollback=f"{'out of' if into else 'back into'} every load balancer", estimated_seconds=5,
        arguments={"host": host.name, "roles": list(roles), "into": into})


def _component_step(cluster: Cluster, host: Host, source: Host | None, component: str, roles: Sequence[str],
                    start: bool, etcd_servers: Sequence[str] | None = None) -> Step:
    path = str(file_of(cluster, host, component))
    arguments: dict[str, object] = {"host": host.name, "component": component, "roles": list(roles), "start": start}
    if source is not None:
        arguments["source"] = source.name
    if etcd_servers is not None:
        arguments["etcd_servers"] = list(etcd_servers)
    return Step(
        id=f"{'start' if start else 'stop'}-{component}-{host.name}", kind="master-component",
        title=(f"Start {component} on {host.name}, as it runs on {source.name if source else '?'}" if start
               else f"Stop {component} on {host.name}"),
        hosts=(host.name,),
        changes=(_change(ChangeKind.FILE, path, host.name, None if start else "present",
                         f"as on {source.name}" if start and source else None),
                 _change(ChangeKind.SERVICE, component, host.name, None if start else "running",
                         "running" if start else None)),
        safety_checks=(ETCD_HEALTHY,) if start and component == APISERVER else (),
        verification=(f"{component} listens and answers its health check" if start
                      else f"no {component} process runs"),
        rollback=("its file removed, the process gone" if start
                  else "its file back, started, healthy (the apiserver ready)"),
        estimated_seconds=20 if start else 5, arguments=arguments)  # type: ignore[arg-type]


def _kubelet_step(cluster: Cluster, host: Host, source: Host | None, roles: Sequence[str], start: bool) -> Step:
    node = host.kube_node_name
    arguments: dict[str, object] = {"host": host.name, "roles": list(roles), "start": start}
    if source is not None:
        arguments["source"] = source.name
    return Step(
        id=f"{'start' if start else 'stop'}-kubelet-{host.name}", kind="master-node",
        title=(f"Start the kubelet on {host.name}; mark Node {node} as {source.name if source else '?'}'s "
               "(labels, taints, cordon)" if start else f"Stop the kubelet on {host.name}; delete Node {node}"),
        hosts=(host.name,),
        changes=(_change(ChangeKind.SERVICE, "kubelet", host.name, None if start else "running",
                         "running" if start else None),
                 _change(ChangeKind.KUBE_OBJECT, f"Node {node}", None, None if start else "registered",
                         "Ready, marked as a master" if start else None)),
        verification=f"Node {node} is Ready and marked" if start else f"Node {node} is gone and no kubelet runs",
        rollback="kubelet stopped, Node deleted" if start else "not automatic: the Node is deleted",
        estimated_seconds=15, reversible=start, arguments=arguments)  # type: ignore[arg-type]


def _tagged(steps: Sequence[Step], host: Host, roles: Sequence[str]) -> list[Step]:
    """etcd steps of the master's own member carry the roles it has once done: a kubeadm
    master's member runs as a static pod, not as a unit."""
    return [s.model_copy(update={"arguments": {**s.arguments, "roles": list(roles)}})
            if s.arguments.get("host") == host.name else s for s in steps]


def _add_steps(cluster: Cluster, host: Host, change: MembershipChange, facts: EtcdFacts,
               leaving: Sequence[Host] = ()) -> list[Step]:
    """``host`` becomes a master: from its files to its scheduler (no snapshot, no inventory).
    ``leaving``: masters the operation retires later (their names are not put in its cert)."""
    source = source_master(cluster, facts.unreachable)
    assert source is not None
    roles = roles_after_add(cluster, host)
    after = with_roles(cluster, host.name, roles)
    # the new apiserver names the members as the source's does, with its own member for a local one
    current = facts.apiserver_etcd_servers.get(source.name)
    servers = (etcd_servers_after(current, source, cluster.etcd_members, cluster_after(cluster, change).etcd_members)
               if current else None)
    steps = [_files_step(cluster, host, source, roles, leaving), _lb_config_step(cluster, host, roles, True),
             _kubelet_step(cluster, host, source, roles, True)]
    joins, repoints = _consumers_apart(membership_steps(cluster, change, facts, cluster_after(cluster, change),
                                                        supports_learners(facts.version)))
    steps += _tagged(joins, host, roles)
    steps.append(_component_step(after, host, source, APISERVER, roles, True, servers))
    steps.append(_rotation_step(after, host, roles, True))
    # the others restart to name the new member only once the new apiserver serves: with one
    # master, its restart would otherwise leave no apiserver at all
    steps += repoints
    steps += [_component_step(after, host, source, c, roles, True) for c in (CONTROLLER_MANAGER, SCHEDULER)]
    return steps


def _consumers_apart(steps: Sequence[Step]) -> tuple[list[Step], list[Step]]:
    """``steps`` of a membership change split into the member's own and the consumers' repoints."""
    return [s for s in steps if s.kind not in CONSUMER_KINDS], [s for s in steps if s.kind in CONSUMER_KINDS]


def _remove_steps(cluster: Cluster, host: Host, change: MembershipChange, facts: EtcdFacts) -> list[Step]:
    """``host`` stops being a master: out of rotation to its files gone (no snapshot, no inventory)."""
    roles = roles_after_remove(host)
    # its own apiserver stops: only the other consumers are repointed off its member, and
    # while it still serves (with two masters, the other's restart would otherwise leave none)
    others = {m: urls for m, urls in facts.apiserver_etcd_servers.items() if m != host.name}
    leave, repoints = _consumers_apart(membership_steps(cluster, change, replace(facts, apiserver_etcd_servers=others),
                                                        cluster_after(cluster, change), supports_learners(facts.version)))
    steps = [*repoints, _rotation_step(cluster, host, roles, False)]
    steps += [_component_step(cluster, host, None, c, roles, False) for c in reversed(COMPONENTS)]
    steps += leave
    steps += [_lb_config_step(cluster, host, roles, False), _kubelet_step(cluster, host, None, roles, False),
              _remove_files_step(cluster, host, roles)]
    return steps


def add_master_plan(*, operation: str, operation_id: str, arguments: Mapping[str, str], cluster: Cluster,
                    host: Host, change: MembershipChange, facts: EtcdFacts, leader_elect: Mapping[str, str],
                    inventory_digest: str, inventory_path: Path, inventory_after: str, inventory_after_digest: str,
                    snapshot_dir: Path, now: datetime) -> Plan:
    reasons = master_refusals(cluster, host, True, change, facts, leader_elect)
    if reasons:
        raise PlanError(f"{operation} refused: " + "; ".join(reasons))
    steps = [snapshot_step(operation_id, source_master(cluster, facts.unreachable), snapshot_dir)] if change.adds else []
    steps += _add_steps(cluster, host, change, facts)
    steps.append(inventory_step(inventory_path, inventory_digest, inventory_after, inventory_after_digest,
                                 f"{host.name} a master"))
    return Plan.build(operation=operation, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(steps))


def remove_master_plan(*, operation: str, operation_id: str, arguments: Mapping[str, str], cluster: Cluster,
                       host: Host, change: MembershipChange, facts: EtcdFacts, inventory_digest: str,
                       inventory_path: Path, inventory_after: str, inventory_after_digest: str, snapshot_dir: Path,
                       now: datetime, nodes_first: Sequence[Step] = ()) -> Plan:
    """``nodes_first``: steps that point nodes naming ``host`` elsewhere, before it goes."""
    reasons = master_refusals(cluster, host, False, change, facts, {})
    if reasons:
        raise PlanError(f"{operation} refused: " + "; ".join(reasons))
    keeper = source_master(cluster, facts.unreachable, host.name)
    steps = [snapshot_step(operation_id, keeper, snapshot_dir)] if change.removes else []
    steps += nodes_first
    steps += _remove_steps(cluster, host, change, facts)
    steps.append(inventory_step(inventory_path, inventory_digest, inventory_after, inventory_after_digest,
                                 f"{host.name} no longer a master"))
    return Plan.build(operation=operation, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(steps))


# ---- migrate-masters: each pair an add, then a remove ---------------------------------------


def migration_pairs(cluster: Cluster, pairs: Sequence[tuple[str, str]]) -> list[tuple[Host, Host]]:
    """``(old, new)`` hosts; InputError naming every bad name: unknown, named twice, an old one
    that is not a master, a new one that is."""
    names = [name for pair in pairs for name in pair]
    reasons = [f"{name} is named more than once" for name in sorted({n for n in names if names.count(n) > 1})]
    known = {h.name: h for h in cluster.hosts}
    reasons += [f"{name} is not a host of the inventory: add it to cluster.yaml first"
                for name in dict.fromkeys(names) if name not in known]
    reasons += [f"{old} is not a master" for old, _ in pairs if old in known and not known[old].has(Role.MASTER)]
    reasons += [f"{new} is a master already" for _, new in pairs if new in known and known[new].has(Role.MASTER)]
    if reasons:
        raise InputError("; ".join(reasons))
    return [(known[old], known[new]) for old, new in pairs]


def migration_change(cluster: Cluster, pairs: Sequence[tuple[Host, Host]]) -> MembershipChange:
    """The etcd membership change of the whole migration: each new master of a stacked
    cluster joins, each old master's member leaves."""
    return MembershipChange(
        adds=tuple(new for _, new in pairs if master_change(cluster, new.name, True)[1].adds),
        removes=tuple(old for old, _ in pairs if old.has(Role.ETCD)))


def facts_after(facts: EtcdFacts, cluster: Cluster, steps: Sequence[Step]) -> EtcdFacts:
    """What planning the next part would read once ``steps`` (one master added or removed on
    ``cluster``) are done: the members, each apiserver's --etcd-servers, calico's endpoints."""
    members = list(facts.members)
    servers = dict(facts.apiserver_etcd_servers)
    calico = facts.calico_endpoints
    for step in steps:
        host = str(step.arguments.get("host", ""))
        if step.kind == "etcd-add-member":
            joining = cluster.host(host)
            members.append(EtcdMember(id=0, name=host, peer_urls=(str(step.arguments["peer_url"]),),
                                      client_urls=(client_url(joining),), is_learner=False))
        elif step.kind == "etcd-remove-member":
            members = [m for m in members if step.arguments["peer_url"] not in m.peer_urls]
        elif step.kind in ("apiserver-etcd-servers", "master-component") and step.arguments.get("etcd_servers"):
            servers[host] = tuple(str(url) for url in step.arguments["etcd_servers"])  # type: ignore[union-attr]
        elif _stops_apiserver(step):
            servers.pop(host, None)
        elif step.kind == "calico-etcd-endpoints":
            calico = tuple(str(url) for url in step.arguments["etcd_servers"])  # type: ignore[union-attr]
    return replace(facts, members=tuple(members), apiserver_etcd_servers=servers, calico_endpoints=calico,
                   unhealthy=())


def migrate_masters_plan(*, operation: str, operation_id: str, arguments: Mapping[str, str], cluster: Cluster,
                         pairs: Sequence[tuple[Host, Host]], facts: EtcdFacts, leader_elect: Mapping[str, str],
                         nodes_first: Sequence[Step], inventory_digest: str, inventory_path: Path, render_inventory: Callable[[Cluster], str],
                         snapshot_dir: Path, now: datetime) -> Plan:
    """Pair by pair (the pair whose old member leads etcd last): the new master added, the
    old one removed, each as ``add-master`` and ``remove-master`` do it, the inventory
    rewritten after each; then each etcd member restarted, new ones first, with an
    --initial-cluster that names the members it now has (a new one's first start had to
    name the old ones; a staying one's names them still). An apiserver is not restarted to
    name a member that just joined when a later step repoints or stops it anyway.
    ``nodes_first``: steps that point nodes naming an old master elsewhere, before any goes."""
    change = migration_change(cluster, pairs)
    reasons = refusals(cluster, change, facts, even_ok=True)
    if source_master(cluster, facts.unreachable) is None:
        reasons.append("no master is reachable over SSH")
    reasons += _vip_reasons(cluster, [old for old, _ in pairs]) + _leader_elect_reasons(leader_elect)
    if reasons:
        raise PlanError(f"{operation} refused: " + "; ".join(reasons))
    ordered = sorted(pairs, key=lambda pair: leads(cluster, facts, pair[0]))
    # the snapshot is kept on the first new master: every old one is retired
    steps = [snapshot_step(operation_id, ordered[0][1], snapshot_dir)] if change.adds or change.removes else []
    steps += nodes_first
    state, digest = cluster, inventory_digest
    joined: set[str] = set()  # ids of the repoints that name a member that just joined
    for old, new in ordered:
        for adding, name in ((True, new.name), (False, old.name)):
            host, part = master_change(state, name, adding)
            roles = roles_after_add(state, host) if adding else roles_after_remove(host)
            part_steps = (_add_steps(state, host, part, facts, [o for o, _ in pairs]) if adding
                          else _remove_steps(state, host, part, facts))
            facts = facts_after(facts, state, part_steps)
            state = with_roles(state, name, roles)
            text = render_inventory(state)
            rewrite = inventory_step(inventory_path, digest, text, inventory_text_digest(text),
                                     f"{name} {'a master' if adding else 'no longer a master'}",
                                     step_id=f"update-inventory-{'add' if adding else 'remove'}-{name}")
            digest = rewrite.arguments["digest"]  # type: ignore[assignment]
            part_steps = _unique(steps, part_steps, name)
            joined |= {s.id for s in part_steps if adding and s.kind == "apiserver-etcd-servers"}
            steps += part_steps + [rewrite]
    steps = _superseded_dropped(steps, joined)
    # a member staying still names the old ones in its --initial-cluster: harmless until its
    # data dir is wiped and it joins again, at addresses that may be another machine's by then.
    # With fewer than 3 members a restart stops etcd (1) or its quorum (2): the flag is left.
    members = sorted(state.etcd_members, key=lambda h: h.name not in {new.name for new in change.adds}) \
        if change.adds and len(state.etcd_members) >= 3 else []
    steps += [restart_step(state, host, ETCD, flags={"initial-cluster": state.etcd_initial_cluster()})
              for host in members]
    return Plan.build(operation=operation, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(accept_later_values(_stopped_later(steps))))


def _stops_apiserver(step: Step) -> bool:
    """Whether ``step`` stops its host's apiserver for good (a master's removal)."""
    return step.kind == "master-component" and step.arguments.get("component") == APISERVER \
        and not step.arguments.get("start")


def _superseded_dropped(steps: Sequence[Step], joined: set[str]) -> list[Step]:
    """``steps`` without each apiserver repoint of ``joined`` that a later step repoints
    again or stops for good: it would restart the apiserver only to add a member that just
    joined to a list that names live ones; the later repoint adds it (its change then shows
    the list the apiserver still has)."""
    def touches(step: Step, host: object) -> bool:
        return step.arguments.get("host") == host and (step.kind == "apiserver-etcd-servers" or _stops_apiserver(step))

    kept: list[Step] = []
    unchanged: dict[object, str | None] = {}  # host -> the list its dropped repoint found
    for i, step in enumerate(steps):
        host = step.arguments.get("host")
        if step.id in joined and any(touches(later, host) for later in steps[i + 1:]):
            unchanged.setdefault(host, step.changes[0].before)
            continue
        if step.kind == "apiserver-etcd-servers" and host in unchanged:
            first = step.changes[0].model_copy(update={"before": unchanged.pop(host)})
            step = step.model_copy(update={"changes": (first, *step.changes[1:])})
        kept.append(step)
    return kept


def _stopped_later(steps: Sequence[Step]) -> list[Step]:
    """``steps`` with each apiserver repoint naming the later step that stops that apiserver
    for good (``stopped_by``; an old master's, repointed while its new one joins): once
    stopped, it has nothing left to repoint, and a resumed run must not start it again."""
    stops = {str(s.arguments["host"]): (i, s.id) for i, s in enumerate(steps) if _stops_apiserver(s)}
    marked = list(steps)
    for i, step in enumerate(marked):
        index, stop = stops.get(str(step.arguments.get("host")), (-1, ""))
        if step.kind == "apiserver-etcd-servers" and index > i:
            marked[i] = step.model_copy(update={"arguments": {**step.arguments, "stopped_by": stop}})
    return marked


def _unique(earlier: Sequence[Step], steps: Sequence[Step], name: str) -> list[Step]:
    """``steps`` with an id an earlier step has (a consumer repointed once per part) made
    unique by the part's host."""
    taken = {s.id for s in earlier}
    return [s.model_copy(update={"id": f"{s.id}-for-{name}"}) if s.id in taken else s for s in steps]


__all__ = [
    "COMPONENTS", "add_master_plan", "facts_after", "last_master", "master_change", "master_refusals", "migrate_masters_plan",
    "migration_change", "migration_pairs", "remove_master_plan", "retarget", "roles_after_add", "roles_after_remove",
    "source_master", "with_roles",
]
