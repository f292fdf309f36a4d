"""Planning an etcd membership change: pure, from the inventory and one look at the cluster.

Every etcd operation (migrate, add, remove) is the same change: members ``adds`` join and
members ``removes`` leave. The plan runs in three phases, because a consumer must never be
left pointing at a member that is gone:

1. each new member joins, one at a time: added as a learner, started with the current
   member list and state "existing", promoted once caught up (etcd < 3.4 has no learners:
   added as a voter and started at once);
2. every consumer that names a leaving member is repointed: each apiserver's
   ``--etcd-servers`` (one master at a time, out of every load balancer while it
   restarts; a kubeadm stacked apiserver reads only its local member, which is leaving);
3. each leaving member goes, non-leaders first and the leader last: leadership moved off
   it, removed, stopped, its data dir kept aside.

Then the inventory is rewritten with the new members. Voters never drop below the
starting number until phase 3, so the cluster tolerates at least as many failures
throughout as it did before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from kubeha.errors import InputError
from kubeha.etcd.gateway import EtcdMember, member_label
from kubeha.model import HOST_NAME_PATTERN, Cluster, EtcdTopology, Host, Role
from kubeha.plan import Change, ChangeKind, Plan, PlanError, Step
from kubeha.render.controlplane import ETCD_CLIENT_PORT

# Safety checks named in plans; registered in kubeha.operations.etcd_view.
ETCD_HEALTHY = "etcd: every voting member healthy, a leader elected"
NO_OTHER_LEARNER = "etcd: no learner but this step's member"
CAUGHT_UP = "etcd: the learner has caught up with the leader"
NOT_LEADER = "etcd: the member to remove is not the leader"
MAJORITY_AFTER = "etcd: a healthy majority of voters remains after the step"
LB_SPARE = "load balancers: each keeps another ready apiserver"
VIP_HELD = "VIP: held by a load balancer host"

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class MembershipChange:
    adds: tuple[Host, ...] = ()
    removes: tuple[Host, ...] = ()


@dataclass(frozen=True)
class EtcdFacts:
    """What planning needs from the live cluster, read once before planning."""

    members: tuple[EtcdMember, ...]
    leader_id: int
    unhealthy: tuple[str, ...] = ()  # "<member>: <reason>"
    version: str = "3.5.0"  # the lowest version any member runs
    apiserver_etcd_servers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # master -> --etcd-servers
    new_hosts_with_data: frozenset[str] = frozenset()  # NEW hosts whose data dir holds a member
    new_hosts_running_etcd: frozenset[str] = frozenset()  # NEW hosts where an etcd process runs
    calico_endpoints: tuple[str, ...] | None = None  # calico on the etcd datastore: its endpoints
    calico_configmap: bool = False  # they are in kube-system/calico-config
    calico_hosts: tuple[str, ...] = ()  # hosts with an /etc/calico/calicoctl.cfg naming them
    unreachable: Mapping[str, str] = field(default_factory=dict)  # host -> why SSH failed


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``OLD=NEW[,OLD=NEW...]`` as (old, new) name pairs."""
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        old, eq, new = item.partition("=")
        if not eq or not old.strip() or not new.strip():
            raise InputError(f"--replace {text!r}: each item must be OLD=NEW, like master1=spare1")
        pairs.append((old.strip(), new.strip()))
    refuse_non_names([name for pair in pairs for name in pair])
    return pairs


def parse_hosts(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError("name at least one host")
    refuse_non_names(names)
    return names


def refuse_non_names(names: Sequence[str]) -> None:
    """InputError for names that no inventory can hold (it would show them as typed: a control
    character in one could break the line); quoted, so that what was typed shows."""
    bad = [name for name in dict.fromkeys(names) if not re.fullmatch(HOST_NAME_PATTERN, name)]
    if bad:
        raise InputError(f"{', '.join(map(repr, bad))}: not a host name (lowercase letters, digits and '-'), "
                         "so not a host of the inventory")


def _host(cluster: Cluster, name: str, reasons: list[str]) -> Host | None:
    try:
        return cluster.host(name)
    except KeyError:
        reasons.append(f"{name} is not a host of the inventory: add it to cluster.yaml first")
        return None


def membership_change(cluster: Cluster, adds: Sequence[str] = (), removes: Sequence[str] = ()) -> MembershipChange:
    """The change, refused (every reason, one InputError) when a name is unknown, repeated,
    already a member (an add) or not one (a remove)."""
    reasons: list[str] = []
    for name in sorted({n for n in [*adds, *removes] if [*adds, *removes].count(n) > 1}):
        reasons.append(f"{name} is named more than once")
    added = [h for h in (_host(cluster, n, reasons) for n in adds) if h is not None]
    removed = [h for h in (_host(cluster, n, reasons) for n in removes) if h is not None]
    reasons += [f"{h.name} is an etcd member already" for h in added if h.has(Role.ETCD)]
    reasons += [f"{h.name} is not an etcd member" for h in removed if not h.has(Role.ETCD)]
    if reasons:
        raise InputError("; ".join(reasons))
    return MembershipChange(tuple(added), tuple(removed))


def cluster_after(cluster: Cluster, change: MembershipChange) -> Cluster:
    """The inventory's cluster once the change is done: roles moved; etcd is external when
    a member is not a master."""
    adds = {h.name for h in change.adds}
    removes = {h.name for h in change.removes}

    def moved(host: Host) -> Host:
        roles = set(host.roles)
        if host.name in adds:
            roles.add(Role.ETCD)
        if host.name in removes:
            roles.discard(Role.ETCD)
        return host.model_copy(update={"roles": frozenset(roles)})

    hosts = tuple(moved(h) for h in cluster.hosts)
    # as discovery decides it: stacked only while every member is a master
    stacked = all(h.has(Role.MASTER) for h in hosts if h.has(Role.ETCD))
    return cluster.model_copy(update={
        "hosts": hosts, "etcd_topology": EtcdTopology.STACKED if stacked else EtcdTopology.EXTERNAL})


def peer_url(cluster: Cluster, host: Host) -> str:
    return cluster.etcd_peer_url(host)


def client_url(host: Host) -> str:
    return f"https://{host.address}:{ETCD_CLIENT_PORT}"


def live_member(members: Sequence[EtcdMember], cluster: Cluster, host: Host) -> EtcdMember | None:
    url = peer_url(cluster, host)
    return next((m for m in members if url in m.peer_urls), None)


def supports_learners(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is None or (int(match[1]), int(match[2])) >= (3, 4)


def _url_host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return ""


def _member_named(url: str, host: Host | None, members: Sequence[Host]) -> str | None:
    """The member of ``members`` a client URL on ``host`` reaches (``127.0.0.1``: ``host``'s own)."""
    address = _url_host(url)
    if address in _LOCAL_HOSTS:
        return host.name if host is not None and host in members else None
    return next((h.name for h in members if str(h.address) == address), None)


def etcd_servers_after(current: Sequence[str], host: Host | None, before: Sequence[Host], after: Sequence[Host]) -> tuple[str, ...]:
    """An apiserver's ``--etcd-servers`` once the members are ``after``.

    A list naming every member before names every member after; otherwise (a kubeadm
    stacked apiserver reads its local member) entries of members that stay are kept, and
    when none stays, every member after is listed. ``127.0.0.1`` is ``host``'s own member.
    """
    listed = {_member_named(url, host, before) for url in current}
    staying = {h.name for h in after}
    every_after = tuple(client_url(h) for h in after)
    if {h.name for h in before} <= listed:
        return every_after
    kept = tuple(url for url in current if _member_named(url, host, before) in staying)
    return kept or every_after


def refusals(cluster: Cluster, change: MembershipChange, facts: EtcdFacts, *, even_ok: bool = False) -> list[str]:
    """Every reason the change must not be planned now. ``even_ok``: an even member count
    is allowed (it tolerates no more failures than one fewer, but loses nothing; masters
    come and go one at a time)."""
    reasons = [f"etcd member {line} (every member must be healthy before a membership change)"
               for line in facts.unhealthy]
    if not facts.leader_id:
        reasons.append("etcd has no leader")
    voters = [m for m in facts.members if not m.is_learner]
    learners = [member_label(m) for m in facts.members if m.is_learner]
    if learners:
        reasons.append(f"etcd learner {', '.join(learners)} exists: promote or remove it first")
    for host in change.removes:
        if live_member(facts.members, cluster, host) is None:
            reasons.append(f"{host.name} ({peer_url(cluster, host)}) is not in etcd's member list")
    reasons += [why for host in change.adds for check in (member_already, member_elsewhere)
                if (why := check(cluster, host, facts))]
    for name, why in facts.unreachable.items():
        reasons.append(f"{name} is not reachable over SSH: {why}")
    final = len(voters) + len(change.adds) - len(change.removes)
    if final < 1:
        reasons.append("the change would leave etcd without members")
    elif final % 2 == 0 and not even_ok:
        reasons.append(f"the change would leave {final} members: an even count tolerates no more failures "
                       f"than {final - 1}; add or remove one more")
    elif len(voters) >= 3 and final < 3:
        reasons.append(f"the change would leave {final} member(s), which tolerate no failure; keep at least 3")
    if cluster.masters and not cluster_after(cluster, change).etcd_members:
        reasons.append("the change would leave the inventory without etcd members")
    return reasons


def member_already(cluster: Cluster, host: Host, facts: EtcdFacts) -> str | None:
    """Why joining ``host`` is no change: etcd lists its peer URL, or a member of its name."""
    if live_member(facts.members, cluster, host) is not None:
        return f"{host.name} ({peer_url(cluster, host)}) is in etcd's member list already"
    namesake = next((m for m in facts.members if m.name == host.name), None)
    if namesake is not None:
        return (f"the etcd member at {', '.join(namesake.peer_urls)} has the name {host.name} already: remove it "
                "first, or fix the inventory's address")
    return None


def member_elsewhere(cluster: Cluster, host: Host, facts: EtcdFacts) -> str | None:
    """Why ``host`` cannot join: it runs an etcd or holds etcd data, yet this cluster's member
    list does not have it: a member of another cluster (or of this one, once)."""
    data = cluster.paths.etcd_data_dir
    if host.name in facts.new_hosts_running_etcd:
        return (f"{host.name} runs an etcd that is not a member of this cluster: it is a member of another "
                f"cluster; stop it" + (f" and move {data} away" if host.name in facts.new_hosts_with_data else "")
                + " first")
    if host.name in facts.new_hosts_with_data:
        return (f"{host.name} already holds etcd data in {data}: it is or was a member of a cluster; move that "
                "data away first")
    return None


def _change(kind: ChangeKind, target: str, host: str | None, before: str | None, after: str | None) -> Change:
    return Change(kind=kind, target=target, host=host, before=before, after=after)


def _join_steps(cluster: Cluster, host: Host, learners: bool) -> list[Step]:
    url = peer_url(cluster, host)
    p = cluster.paths
    member = {"host": host.name, "peer_url": url}
    add = Step(
        id=f"add-member-{host.name}", kind="etcd-add-member",
        title=f"Add {host.name} to etcd as a {'learner' if learners else 'voter'}",
        hosts=(host.name,),
        changes=(_change(ChangeKind.ETCD_MEMBER, host.name, None, None,
                         f"{'learner' if learners else 'voter'} {url} (not started)"),),
        safety_checks=(ETCD_HEALTHY, NO_OTHER_LEARNER) + (() if learners else (MAJORITY_AFTER,)),
        verification="the member list shows the new member",
        rollback="remove the member again", estimated_seconds=2,
        arguments={**member, "learner": learners})
    files = [(ChangeKind.CERT, path) for path in (p.etcd_ca.cert, p.etcd_server.cert, p.etcd_server.key,
                                                   p.etcd_peer.cert, p.etcd_peer.key)]
    start = Step(
        id=f"start-member-{host.name}", kind="etcd-start-member",
        title=f"Start etcd on {host.name} with the current members and state existing",
        hosts=(host.name,),
        changes=tuple(_change(kind, str(path), host.name, None, "issued by the etcd CA") for kind, path in dict.fromkeys(files))
        + (_change(ChangeKind.FILE, "etcd member manifest or unit", host.name, None, "initial-cluster-state=existing"),
           _change(ChangeKind.SERVICE, "etcd", host.name, "absent", "running")),
        safety_checks=(NO_OTHER_LEARNER, MAJORITY_AFTER) if learners else (MAJORITY_AFTER,),
        verification="the member serves on its client URL" + (" and has caught up with the leader" if learners else ""),
        rollback="stop it, restore its files, wipe its new data and remove the member",
        estimated_seconds=20, arguments=member)
    steps = [add, start]
    if learners:
        steps.append(Step(
            id=f"promote-member-{host.name}", kind="etcd-promote-member",
            title=f"Promote learner {host.name} to a voting member", hosts=(host.name,),
            changes=(_change(ChangeKind.ETCD_MEMBER, host.name, None, "learner", "voter"),),
            safety_checks=(ETCD_HEALTHY, CAUGHT_UP),
            verification="the member list shows it as a voter",
            rollback="remove the member (leadership moved off it first), stop it and wipe its data",
            estimated_seconds=5, arguments=member))
    return steps


def _repoint_step(cluster: Cluster, host: Host, current: Sequence[str], target: Sequence[str], step_id: str) -> Step:
    lbs = [h.name for h in cluster.lb_hosts] if cluster.vip is not None else []
    return Step(
        id=step_id, kind="apiserver-etcd-servers",
        title=f"Point the apiserver on {host.name} at the new etcd members, out of every load balancer",
        hosts=(host.name,),
        changes=(_change(ChangeKind.FILE, "kube-apiserver --etcd-servers", host.name, ",".join(current), ",".join(target)),
                 _change(ChangeKind.SERVICE, "kube-apiserver", host.name, "running", "restarted"))
        + tuple(_change(ChangeKind.LB_BACKEND, f"kube-apiserver/{host.name}", lb, "ready", "out while it restarts, then ready")
                for lb in lbs),
        safety_checks=(LB_SPARE, VIP_HELD),
        verification="the running apiserver has the new --etcd-servers, answers /readyz and is back in every load balancer",
        rollback="restore its file, restart it, put it back in the load balancers",
        estimated_seconds=25, arguments={"host": host.name, "etcd_servers": list(target)})


def _leave_steps(cluster: Cluster, host: Host, staying: Sequence[Host]) -> list[Step]:
    url = peer_url(cluster, host)
    member = {"host": host.name, "peer_url": url}
    return [
        Step(id=f"move-leader-off-{host.name}", kind="etcd-move-leader",
             title=f"Move etcd leadership off {host.name} if it leads", hosts=(host.name,),
             changes=(_change(ChangeKind.ETCD_MEMBER, host.name, None, "leader (maybe)", "follower"),),
             safety_checks=(ETCD_HEALTHY,),
             verification=f"the leader is not {host.name}", rollback="nothing to undo",
             estimated_seconds=2,
             arguments={**member, "to_peer_urls": [peer_url(cluster, h) for h in staying]}),
        Step(id=f"remove-member-{host.name}", kind="etcd-remove-member",
             title=f"Remove {host.name} from etcd", hosts=(host.name,),
             changes=(_change(ChangeKind.ETCD_MEMBER, host.name, None, f"voter {url}", None),),
             safety_checks=(ETCD_HEALTHY, NOT_LEADER, MAJORITY_AFTER),
             verification="the member list no longer shows it",
             rollback=f"not automatic: add {host.name} back with `kubeha etcd add {host.name}` once its data is moved away",
             estimated_seconds=8, reversible=False, arguments=member),
        Step(id=f"stop-member-{host.name}", kind="etcd-stop-member",
             title=f"Stop etcd on {host.name} and keep its data dir aside", hosts=(host.name,),
             changes=(_change(ChangeKind.SERVICE, "etcd", host.name, "running", "stopped"),
                      _change(ChangeKind.FILE, str(cluster.paths.etcd_data_dir), host.name, "in use",
                              f"moved to {cluster.paths.etcd_data_dir}.retired-<operation>")),
             verification="no etcd process runs there", rollback="not needed: the member is gone",
             estimated_seconds=10, reversible=False, arguments=member),
    ]


def _pairs(cluster: Cluster, change: MembershipChange, facts: EtcdFacts) -> list[tuple[Host | None, Host | None]]:
    """(joining, leaving) pairs in the order they run: the pair whose leaving member leads
    goes last (its leadership then moves to a member that stays)."""
    pairs = list(zip_longest(change.adds, change.removes))
    return sorted(pairs, key=lambda pair: pair[1] is not None and leads(cluster, facts, pair[1]))


def leads(cluster: Cluster, facts: EtcdFacts, host: Host) -> bool:
    """Whether ``host``'s member led etcd when ``facts`` were read."""
    member = live_member(facts.members, cluster, host)
    return member is not None and member.id == facts.leader_id


CALICO = "calico"  # the consumer key of calico's etcd endpoints, beside the masters' names
CONSUMER_KINDS = ("apiserver-etcd-servers", "calico-etcd-endpoints")  # steps repointing a consumer


def membership_steps(cluster: Cluster, change: MembershipChange, facts: EtcdFacts, after: Cluster,
                      learners: bool) -> list[Step]:
    """Pair by pair: the new member joins; each consumer (an apiserver's --etcd-servers,
    calico's endpoints) left with no staying member is repointed at the members after the
    pair (a kubeadm stacked apiserver reads only its local member); the old member leaves.
    Voters go 3 -> 4 -> 3, never higher. Then every consumer still naming a member that
    left gets the final list."""
    steps: list[Step] = []
    originals = _consumers(cluster, facts)
    lists = dict(originals)
    members = list(cluster.etcd_members)

    def repoint(key: str, target: tuple[str, ...], step_id: str) -> None:
        step = (calico_step(facts, lists[key], target, step_id) if key == CALICO
                else _repoint_step(cluster, cluster.host(key), lists[key], target, step_id))
        steps.append(step)
        lists[key] = target

    for joining, leaving in _pairs(cluster, change, facts):
        if joining is not None:
            steps.extend(_join_steps(cluster, joining, learners))
            members = [h for h in cluster.hosts if h in members or h == joining]  # inventory order
        if leaving is None:
            continue
        staying = [h for h in members if h.name != leaving.name]
        for key in originals:
            if not _names_a_member(lists[key], _consumer_host(cluster, key), members, staying):
                repoint(key, tuple(client_url(h) for h in staying), f"repoint-{_consumer_step(key)}-off-{leaving.name}")
        steps.extend(_leave_steps(cluster, leaving, staying))
        members = staying
    for key, current in originals.items():
        final = etcd_servers_after(current, _consumer_host(cluster, key), cluster.etcd_members, after.etcd_members)
        if lists[key] != final:
            repoint(key, final, f"repoint-{_consumer_step(key)}")
    return accept_later_values(steps)


# kinds whose steps set one thing (a consumer's etcd list, the inventory file, the VIPs the
# LBs serve) that a later step of the same kind may set again: the argument that holds the value set
_LATER_VALUES = {"apiserver-etcd-servers": "etcd_servers", "calico-etcd-endpoints": "etcd_servers",
                 "inventory-update": "digest", "lb-vips": "vips"}


def accept_later_values(steps: Sequence[Step]) -> list[Step]:
    """``steps`` with each such step accepting its own value and every later one for the
    same thing: a thing already at a later value has had an earlier step's job done (a
    resumed run must not set it back)."""
    def thing(step: Step) -> tuple[str, object] | None:
        return (step.kind, step.arguments.get("host")) if step.kind in _LATER_VALUES else None

    done = list(steps)
    for i, step in enumerate(done):
        if thing(step) is not None:
            later = [s.arguments[_LATER_VALUES[s.kind]] for s in done[i:] if thing(s) == thing(step)]
            done[i] = step.model_copy(update={"arguments": {**step.arguments, "accepted": later}})
    return done


def _consumers(cluster: Cluster, facts: EtcdFacts) -> dict[str, tuple[str, ...]]:
    """Every list of etcd client URLs kubeha keeps right, by consumer key."""
    lists = {m.name: tuple(facts.apiserver_etcd_servers[m.name]) for m in cluster.masters
             if facts.apiserver_etcd_servers.get(m.name)}
    if facts.calico_endpoints:
        lists[CALICO] = tuple(facts.calico_endpoints)
    return lists


def _consumer_host(cluster: Cluster, key: str) -> Host | None:
    return None if key == CALICO else cluster.host(key)


def _consumer_step(key: str) -> str:
    return "calico" if key == CALICO else f"apiserver-{key}"


def calico_step(facts: EtcdFacts, current: Sequence[str], target: Sequence[str], step_id: str) -> Step:
    where = (["ConfigMap kube-system/calico-config"] if facts.calico_configmap else []) + [
        f"{host}:/etc/calico/calicoctl.cfg" for host in facts.calico_hosts]
    return Step(
        id=step_id, kind="calico-etcd-endpoints", title="Point calico at the etcd members",
        hosts=tuple(facts.calico_hosts),
        changes=tuple(_change(ChangeKind.KUBE_OBJECT if w.startswith("ConfigMap") else ChangeKind.FILE, w, None,
                              ",".join(current), ",".join(target)) for w in where),
        verification="calico-config and every calicoctl.cfg name the new members; calico-node rolled",
        rollback="the old endpoints written back, calico-node rolled again", estimated_seconds=3,
        arguments={"etcd_servers": list(target), "previous": list(current), "configmap": facts.calico_configmap,
                   "hosts": list(facts.calico_hosts)})


def _names_a_member(urls: Sequence[str], host: Host | None, members: Sequence[Host], staying: Sequence[Host]) -> bool:
    """Whether ``urls`` (a consumer's list, on ``host``) name a member of ``staying``."""
    named = {_member_named(url, host, members) for url in urls}
    return bool(named & {h.name for h in staying})


def snapshot_step(operation_id: str, keeper: Host | None, snapshot_dir: Path) -> Step:
    """A verified etcd snapshot, kept here and (when there is one) on the master ``keeper``."""
    local = str(snapshot_dir / f"{operation_id}.db")
    remote = f"/var/lib/kubeha/snapshots/{operation_id}.db"
    return Step(
        id="snapshot", kind="etcd-snapshot", title="Take and verify an etcd snapshot, kept here and on a master",
        hosts=(keeper.name,) if keeper else (),
        changes=(_change(ChangeKind.FILE, local, None, None, "verified snapshot"),)
        + ((_change(ChangeKind.FILE, remote, keeper.name, None, "same snapshot"),) if keeper else ()),
        safety_checks=(ETCD_HEALTHY,), verification="etcdutl/etcdctl snapshot status passes; both copies have one digest",
        rollback="nothing to undo: the snapshot is kept", estimated_seconds=5,
        arguments={"local_path": local, "host": keeper.name if keeper else "", "remote_path": remote})


def inventory_step(path: Path, digest: str, content: str, digest_after: str, what: str,
                   step_id: str = "update-inventory") -> Step:
    """The inventory file rewritten once the operation is done (``what``: what is new in it)."""
    return Step(
        id=step_id, kind="inventory-update", title=f"Rewrite {path}: {what}",
        changes=(_change(ChangeKind.FILE, str(path), None, digest, digest_after),),
        verification=f"the inventory file has {what}", rollback=f"restore {path} from its backup beside it",
        estimated_seconds=1, arguments={"path": str(path), "content": content, "digest": digest_after})


def membership_plan(*, operation: str, operation_id: str, arguments: Mapping[str, str], cluster: Cluster,
                    change: MembershipChange, facts: EtcdFacts, inventory_digest: str, inventory_path: Path,
                    inventory_after: str, inventory_after_digest: str, snapshot_dir: Path, now: datetime) -> Plan:
    """The plan for ``change``, or PlanError naming every reason it must not be made."""
    reasons = refusals(cluster, change, facts)
    if reasons:
        raise PlanError(f"{operation} refused: " + "; ".join(reasons))
    after = cluster_after(cluster, change)
    learners = supports_learners(facts.version)
    keeper = next((m for m in cluster.masters if m not in change.removes), cluster.masters[0] if cluster.masters else None)
    steps = [snapshot_step(operation_id, keeper, snapshot_dir)]
    steps += membership_steps(cluster, change, facts, after, learners)
    if len(cluster.masters) == 1 and any(s.kind == "apiserver-etcd-servers" for s in steps):
        raise PlanError(f"{operation} refused: the apiserver on {cluster.masters[0].name}, the only one, must "
                        "restart to name the new etcd members and the API would be down meanwhile; add a master "
                        "first (kubeha add-master HOST)")
    steps.append(inventory_step(inventory_path, inventory_digest, inventory_after, inventory_after_digest,
                                "the new etcd members"))
    return Plan.build(operation=operation, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(steps))


__all__ = [
    "CAUGHT_UP", "CONSUMER_KINDS", "ETCD_HEALTHY", "accept_later_values", "EtcdFacts", "inventory_step", "LB_SPARE", "MAJORITY_AFTER", "MembershipChange", "NOT_LEADER",
    "NO_OTHER_LEARNER", "VIP_HELD", "client_url", "cluster_after", "etcd_servers_after", "leads", "live_member",
    "member_already", "member_elsewhere", "membership_change", "membership_plan", "membership_steps", "parse_hosts", "parse_pairs", "peer_url", "refusals", "refuse_non_names",
    "snapshot_step",
    "supports_learners",
]
