"""A fresh look at the cluster for the safety checks of membership changes, and the checks.

The engine asks for a new ``ClusterView`` before every decision. Its etcd part (members,
each member's status, the leader) is read when the view is made; the load balancers and
the VIP holders, which cost an SSH round to several hosts, are read the first time a
check asks for them, so etcd-only steps do not pay for them. Checks are pure functions of
the view and the step they guard; each returns a reason or None.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubeha.access import ClusterAccess
from kubeha.errors import KubehaError
from kubeha.etcd.gateway import EtcdClient, EtcdMember, EtcdStatus, member_label
from kubeha.etcd.quorum import can_promote, can_remove, quorum
from kubeha.lb.apply import vip_holding
from kubeha.lb.drain import BackendStates, backend_states
from kubeha.model import Cluster, VirtualIP
from kubeha.operations.etcd_plan import peer_url
from kubeha.plan import Step

STATUS_TIMEOUT = 1.0


@dataclass(frozen=True)
class EtcdState:
    members: tuple[EtcdMember, ...] = ()
    statuses: Mapping[int, EtcdStatus | str] = field(default_factory=dict)  # member id -> status or why none
    error: str | None = None  # etcd could not be read at all

    @property
    def leader_id(self) -> int:
        leaders = [s.leader for s in self.statuses.values() if isinstance(s, EtcdStatus) and s.leader]
        return max(set(leaders), key=leaders.count) if leaders else 0

    def member(self, peer_url: str) -> EtcdMember | None:
        return next((m for m in self.members if peer_url in m.peer_urls), None)

    def healthy(self, member: EtcdMember) -> bool:
        status = self.statuses.get(member.id)
        return isinstance(status, EtcdStatus) and status.leader != 0

    @property
    def voters(self) -> list[EtcdMember]:
        return [m for m in self.members if not m.is_learner]

    @property
    def healthy_ids(self) -> set[int]:
        return {m.id for m in self.members if self.healthy(m)}

    def progress(self, member: EtcdMember) -> float:
        """The share of the leader's raft log ``member`` has (0.0 when either is unknown)."""
        mine, leader = self.statuses.get(member.id), self.statuses.get(self.leader_id)
        if not isinstance(mine, EtcdStatus) or not isinstance(leader, EtcdStatus) or not leader.raft_index:
            return 0.0
        return min(1.0, mine.raft_index / leader.raft_index)

    def why_unhealthy(self, member: EtcdMember) -> str:
        status = self.statuses.get(member.id)
        return status if isinstance(status, str) else "knows no leader"


def read_etcd_state(client: EtcdClient) -> EtcdState:
    try:
        members = client.member_list()
    except KubehaError as e:
        return EtcdState(error=str(e))
    return EtcdState(tuple(members), client.statuses(members, STATUS_TIMEOUT))


class ClusterView:
    """One look at the cluster: etcd now, the load balancers and the VIP on first use."""

    def __init__(self, cluster: Cluster, etcd: EtcdState, read_backends: Callable[[], BackendStates],
                 read_vip_holders: Callable[[], tuple[str, ...]]) -> None:
        self.cluster = cluster
        self.etcd = etcd
        self.read_backends = read_backends
        self.read_vip_holders = read_vip_holders

    @functools.cached_property
    def backends(self) -> BackendStates:
        return self.read_backends()

    @functools.cached_property
    def vip_holders(self) -> tuple[str, ...]:
        return self.read_vip_holders()

    def observed(self) -> dict[str, object]:
        """What this look saw, by host name, for the journal (``kubeha audit`` compares it with
        the simulator's model): etcd's voters, learners, healthy members and leader; and,
        where the checks read them, the apiservers in every load balancer and the VIP's
        holders. No addresses of clients, no file contents."""
        by_peer = {peer_url(self.cluster, h): h.name for h in self.cluster.hosts}
        state = self.etcd

        def host_of(member: EtcdMember) -> str:
            return next((by_peer[u] for u in member.peer_urls if u in by_peer), member.name)

        look: dict[str, object] = {}
        if state.error is None:
            look |= {"voters": sorted(host_of(m) for m in state.voters),
                     "learners": sorted(host_of(m) for m in state.members if m.is_learner),
                     "healthy": sorted(host_of(m) for m in state.members if state.healthy(m)),
                     "leader": next((host_of(m) for m in state.members if m.id == state.leader_id), None)}
        if "backends" in self.__dict__:  # read by a check of this step (cached_property)
            servers = {s for listed in (*self.backends.haproxy.values(), *self.backends.node_proxies.values())
                       for s in listed}
            # serving, not "every check passing": one check failing under load is no divergence
            look["in_lbs"] = sorted(s for s in servers if self.backends.serving_everywhere(s))
        if "vip_holders" in self.__dict__:
            look["vip_holders"] = sorted(self.vip_holders)
        return look


def cluster_view_factory(access: ClusterAccess) -> Callable[[], ClusterView]:
    """The engine's view factory: one etcd client for the run, a new look per call, of the
    cluster as the inventory says it is now (an operation may rewrite it midway)."""
    client = access.etcd()

    def look() -> ClusterView:
        cluster = access.cluster
        return ClusterView(cluster, read_etcd_state(client), lambda: backend_states(access, cluster),
                           lambda: vip_holders(access, cluster))
    return look


def vip_holders(access: ClusterAccess, cluster: Cluster, vip: VirtualIP | None = None) -> tuple[str, ...]:
    """The LB hosts that hold ``vip`` (default: the cluster's VIP) now; a host that cannot be
    asked is not counted."""
    vip = vip or cluster.vip
    if vip is None:
        return ()
    return tuple(name for name, outcome in vip_holding(access, vip).items() if outcome.error is None and outcome.value)


# ---- safety checks: (view, step) -> reason | None -------------------------------------------


def _step_member(view: ClusterView, step: Step) -> EtcdMember | None:
    return view.etcd.member(str(step.arguments.get("peer_url", "")))


def etcd_healthy(view: ClusterView, step: Step) -> str | None:
    state = view.etcd
    if state.error:
        return f"etcd cannot be read: {state.error}"
    sick = [f"{member_label(m)} ({state.why_unhealthy(m)})" for m in state.voters if not state.healthy(m)]
    if sick:
        return f"voting member(s) not healthy: {'; '.join(sick)}"
    if not state.leader_id:
        return "etcd has no leader"
    return None


def no_other_learner(view: ClusterView, step: Step) -> str | None:
    own = str(step.arguments.get("peer_url", ""))
    others = [member_label(m) for m in view.etcd.members if m.is_learner and own not in m.peer_urls]
    if others:
        return f"learner {', '.join(others)} exists: etcd allows one learner at a time"
    return None


def caught_up(view: ClusterView, step: Step) -> str | None:
    member = _step_member(view, step)
    if member is None:
        return f"{step.arguments.get('host')} is not in etcd's member list"
    if not member.is_learner:
        return None
    return can_promote(view.etcd.progress(member))


def not_leader(view: ClusterView, step: Step) -> str | None:
    member = _step_member(view, step)
    if member is not None and member.id == view.etcd.leader_id:
        return f"{member_label(member)} is the leader: move leadership off it first"
    return None


def majority_after(view: ClusterView, step: Step) -> str | None:
    """Enough healthy voters once the step is done: one more voter for an added voter, one
    fewer for a removed one (etcd's own rule: can_remove), the same for a start."""
    state = view.etcd
    if state.error:
        return f"etcd cannot be read: {state.error}"
    voters, healthy = state.voters, state.healthy_ids
    healthy_voters = sum(1 for m in voters if m.id in healthy)
    if step.kind == "etcd-remove-member":
        member = _step_member(view, step)
        return None if member is None else can_remove(state.members, healthy, member.id, state.leader_id)
    adding = step.kind == "etcd-add-member" and not step.arguments.get("learner", True)
    total = len(voters) + adding
    if healthy_voters < quorum(total):
        return (f"{healthy_voters} healthy of {total} voters after the step, below the quorum of "
                f"{quorum(total)}")
    return None


def majority_while_down(view: ClusterView, step: Step) -> str | None:
    """A healthy majority of voters remains while the step's member is down (a restart)."""
    state = view.etcd
    if state.error:
        return f"etcd cannot be read: {state.error}"
    member = _step_member(view, step)
    others = sum(1 for m in state.voters if m.id in state.healthy_ids and (member is None or m.id != member.id))
    if others < quorum(len(state.voters)):
        down = member_label(member) if member is not None else step.arguments.get("host")
        return (f"while {down} is down, {others} healthy of {len(state.voters)} voters remain, below the "
                f"quorum of {quorum(len(state.voters))}")
    return None


def lb_spare(view: ClusterView, step: Step) -> str | None:
    """Each load balancer keeps a ready apiserver other than the step's host."""
    if view.cluster.vip is None and not view.backends.node_proxies:
        return None
    host = str(step.arguments.get("host", ""))
    bare = [lb for lb in view.backends.haproxy if not view.backends.ready_servers(lb) - {host}]
    bare += [proxy for proxy, servers in view.backends.node_proxies.items()
             if not [s for s, in_rotation in servers.items() if in_rotation and s != host]]
    if bare:
        return f"without {host}, no ready apiserver would remain behind {', '.join(sorted(bare))}"
    return None


def vip_held(view: ClusterView, step: Step) -> str | None:
    if view.cluster.vip is not None and not view.vip_holders:
        return f"no load balancer host holds the VIP {view.cluster.vip.address}"
    return None
