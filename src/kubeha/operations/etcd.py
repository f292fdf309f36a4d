"""etcd membership operations: ``etcd-migrate``, ``etcd-add``, ``etcd-remove``.

The plan comes from ``etcd_plan`` (pure), the checks from ``etcd_view``; this module holds
the step kinds, which act through a ``ClusterAccess`` (``ctx.cluster``), and the three
operations. Every step is idempotent and recognises its own effect on the cluster, so a
resume after a crash at any point goes on from what the cluster shows.
"""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities
from kubeha.errors import InputError, KubehaError
from kubeha.etcd.gateway import EtcdClient, EtcdMember, EtcdStatus, initial_cluster, member_label
from kubeha.etcd.errors import EtcdError
from kubeha.etcd.snapshot import verify_snapshot
from kubeha.hosts import BackupSet
from kubeha.inventory import Inventory, dump_inventory, load_inventory
from kubeha.model import Cluster, Host, Role
from kubeha.operations import apiserver, etcd_hosts
from kubeha.operations.calico import RepointCalico, read_calico_config
from kubeha.operations.base import Operation
from kubeha.operations.etcd_plan import (
    CAUGHT_UP, ETCD_HEALTHY, LB_SPARE, MAJORITY_AFTER, NO_OTHER_LEARNER, NOT_LEADER, VIP_HELD, EtcdFacts,
    MembershipChange, client_url, cluster_after, membership_change, membership_plan, parse_hosts, parse_pairs,
)
from kubeha.operations.etcd_view import (
    caught_up, cluster_view_factory, etcd_healthy, lb_spare, majority_after, no_other_learner,
    not_leader, read_etcd_state, vip_held,
)
from kubeha.plan import Plan, Registry, StepContext, StepKind, StepNotVerified, ViewFactory, default_journal_path
from kubeha.plan import inventory_digest, new_operation_id, step_backup_set

REMOTE_SNAPSHOT_MODE = 0o600
CATCH_UP_TIMEOUT = 60.0
# a new member serves within seconds (it answers before a large snapshot has arrived)
START_TIMEOUT = 30.0
_POLL = 0.5

# the safety checks etcd plans name (operations that embed etcd steps register them too)
CHECKS = ((ETCD_HEALTHY, etcd_healthy), (NO_OTHER_LEARNER, no_other_learner), (CAUGHT_UP, caught_up),
          (NOT_LEADER, not_leader), (MAJORITY_AFTER, majority_after), (LB_SPARE, lb_spare), (VIP_HELD, vip_held))
registry = Registry()
for _name, _check in CHECKS:
    registry.step_check(_name)(_check)


# ---- what step kinds share ------------------------------------------------------------------

_clients: weakref.WeakKeyDictionary[ClusterAccess, EtcdClient] = weakref.WeakKeyDictionary()


def _access(ctx: StepContext) -> ClusterAccess:
    return ctx.cluster


def _shared_client(access: ClusterAccess) -> EtcdClient:
    """One etcd client per access (its endpoints: the members before and after the change)."""
    if access not in _clients:
        _clients[access] = access.etcd()
    return _clients[access]


def _etcd(ctx: StepContext) -> EtcdClient:
    return _shared_client(_access(ctx))


def _host(ctx: StepContext) -> Host:
    """The step's host; with the roles it has once the operation is done when the step says
    them (a new master's etcd member runs as a static pod on kubeadm)."""
    host = _access(ctx).cluster.host(str(ctx.step.arguments["host"]))
    roles = ctx.step.arguments.get("roles")
    if not isinstance(roles, list):
        return host
    return host.model_copy(update={"roles": frozenset(Role(str(r)) for r in roles)})


def _peer_url(ctx: StepContext) -> str:
    return str(ctx.step.arguments["peer_url"])


def step_member(ctx: StepContext) -> EtcdMember | None:
    url = _peer_url(ctx)
    return next((m for m in _etcd(ctx).member_list() if url in m.peer_urls), None)


def _step_backup(ctx: StepContext, step_id: str | None = None) -> BackupSet:
    """A step's own backup set on the hosts (this step's, or ``step_id``'s of the plan)."""
    return step_backup_set(ctx.plan, step_id or ctx.step.id)


def _backed_up(ctx: StepContext, host: Host, step_id: str | None = None) -> BackupSet:
    backup = _step_backup(ctx, step_id)
    ctx.took_backup(host.name, backup)
    return backup


def _retry_membership(change: Callable[[], object], done: Callable[[], bool], what: str,
                      timeout: float = 30.0) -> None:
    """etcd refuses membership changes for a few seconds after the last one ("unhealthy
    cluster" while its peers' connections are young): try again until ``timeout``. A change
    whose answer was lost (a leader election in between) may have happened all the same:
    ``done`` is asked after every error."""
    deadline = time.monotonic() + timeout
    first: str | None = None
    while True:
        try:
            change()
            return
        except EtcdError as e:
            if done():
                return
            first = first or str(e)
            if time.monotonic() > deadline:
                raise EtcdError(f"{what}: {e}" + (f" (first error: {first})" if first != str(e) else "")) from e
            time.sleep(1.0)


def _remove_if_member(ctx: StepContext) -> None:
    client = _etcd(ctx)
    member = step_member(ctx)
    if member is None:
        return
    if not member.is_learner:
        move_leadership_off(ctx, member)
    _retry_membership(lambda: client.member_remove(member.id), lambda: step_member(ctx) is None,
                      f"removing {member_label(member)}")


def move_leadership_off(ctx: StepContext, member: EtcdMember, prefer: tuple[str, ...] = ()) -> None:
    state = read_etcd_state(_etcd(ctx))
    if state.leader_id != member.id:
        return
    candidates = [m for m in state.voters if m.id != member.id and state.healthy(m)]
    candidates.sort(key=lambda m: not any(url in m.peer_urls for url in prefer))
    if not candidates:
        raise EtcdError(f"no healthy voter can take leadership from {member_label(member)}")
    _etcd(ctx).move_leader(candidates[0].id)


def _withdraw_new_member(ctx: StepContext, start_step: str) -> None:
    """Undo a join: the member removed, its etcd stopped, its files restored, its new data wiped."""
    access, host = _access(ctx), _host(ctx)
    _remove_if_member(ctx)
    cluster = access.cluster
    etcd_hosts.stop_member(access, cluster, host, _backed_up(ctx, host, start_step))
    access.restore(host, _step_backup(ctx, start_step))
    etcd_hosts.wipe_new_member_data(access, cluster, host)


# ---- step kinds -----------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TakeSnapshot(StepKind):
    name = "etcd-snapshot"
    nothing_to_undo = True

    def _copies_agree(self, ctx: StepContext) -> bool:
        local = Path(str(ctx.step.arguments["local_path"]))
        if not local.exists():
            return False
        host = str(ctx.step.arguments["host"])
        if not host:
            return True
        remote = _access(ctx).get_file(host, str(ctx.step.arguments["remote_path"]))
        return remote is not None and _sha256(remote) == _sha256(local.read_bytes())

    def is_done(self, ctx: StepContext) -> bool:
        return self._copies_agree(ctx)

    def apply(self, ctx: StepContext) -> None:
        local = Path(str(ctx.step.arguments["local_path"]))
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _etcd(ctx).snapshot(local)  # verified before it is kept
        host = str(ctx.step.arguments["host"])
        if host:
            _access(ctx).put_file(host, str(ctx.step.arguments["remote_path"]), local.read_bytes(),
                                  mode=REMOTE_SNAPSHOT_MODE, owner="root:root",
                                  backup=_backed_up(ctx, _access(ctx).cluster.host(host)))

    def verify(self, ctx: StepContext) -> None:
        local = Path(str(ctx.step.arguments["local_path"]))
        if not local.exists():
            raise StepNotVerified(f"no snapshot at {local}")
        verify_snapshot(local)
        if not self._copies_agree(ctx):
            raise StepNotVerified(f"the copy on {ctx.step.arguments['host']} differs from {local}")

    def rollback(self, ctx: StepContext) -> None:
        """The snapshot is kept: it is what a later recovery would need."""


class AddMember(StepKind):
    name = "etcd-add-member"
    retryable = (EtcdError,)
    retry_budget = 20
    retry_delay_seconds = 1.0

    def is_done(self, ctx: StepContext) -> bool:
        return step_member(ctx) is not None

    def apply(self, ctx: StepContext) -> None:
        if step_member(ctx) is None:
            _etcd(ctx).member_add([_peer_url(ctx)], learner=bool(ctx.step.arguments.get("learner", True)))

    def verify(self, ctx: StepContext) -> None:
        if step_member(ctx) is None:
            raise StepNotVerified(f"{ctx.step.arguments['host']} is not in etcd's member list")

    def rollback(self, ctx: StepContext) -> None:
        _remove_if_member(ctx)


class StartMember(StepKind):
    name = "etcd-start-member"

    def _serving(self, ctx: StepContext, member: EtcdMember | None) -> bool:
        access, host = _access(ctx), _host(ctx)
        return (member is not None and bool(member.name)
                and etcd_hosts.member_process_running(access, access.cluster, host))

    def is_done(self, ctx: StepContext) -> bool:
        member = step_member(ctx)
        if not self._serving(ctx, member):
            return False
        assert member is not None
        return not member.is_learner or _progress(ctx, member) >= 0.9

    def apply(self, ctx: StepContext) -> None:
        access, host = _access(ctx), _host(ctx)
        cluster = access.cluster
        member = step_member(ctx)
        if member is None:
            raise KubehaError(f"{host.name} is not in etcd's member list: its add step must come first")
        if self._serving(ctx, member):
            return
        if etcd_hosts.data_dir_holds_member(access, cluster, host):
            if member.name:  # it joined before and stopped: start it on its own data
                etcd_hosts.start_member(access, cluster, host)
                return
            # data from an attempt of this step that never joined (the plan refused data there)
            etcd_hosts.wipe_new_member_data(access, cluster, host)
        members = _etcd(ctx).member_list()
        master = next((m for m in cluster.masters if m.name not in access.connect_errors), None)
        if master is None:
            raise KubehaError("no master is reachable over SSH to read the etcd CA from")
        auth = load_authorities(access, master)
        etcd_hosts.prepare_member(access, cluster, host, auth, initial_cluster(members, member.id, host.name),
                                  _backed_up(ctx, host))
        etcd_hosts.start_member(access, cluster, host)

    def verify(self, ctx: StepContext) -> None:
        access, host = _access(ctx), _host(ctx)
        etcd_hosts.wait_member_serving(access, access.cluster, host, START_TIMEOUT)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while True:
            member = step_member(ctx)
            if member is not None and member.name and (not member.is_learner or _progress(ctx, member) >= 0.9):
                return
            if time.monotonic() > deadline:
                raise StepNotVerified(f"etcd on {host.name} serves but has not caught up with the leader "
                                      f"within {CATCH_UP_TIMEOUT:.0f} s")
            time.sleep(_POLL)

    def rollback(self, ctx: StepContext) -> None:
        _withdraw_new_member(ctx, ctx.step.id)


def _progress(ctx: StepContext, member: EtcdMember) -> float:
    state = read_etcd_state(_etcd(ctx))
    return state.progress(member)


class PromoteMember(StepKind):
    name = "etcd-promote-member"
    retryable = (EtcdError,)  # "can only promote a learner member which is in sync with leader"
    retry_budget = 30
    retry_delay_seconds = 1.0

    def is_done(self, ctx: StepContext) -> bool:
        member = step_member(ctx)
        return member is not None and not member.is_learner

    def apply(self, ctx: StepContext) -> None:
        member = step_member(ctx)
        if member is None:
            raise KubehaError(f"{ctx.step.arguments['host']} is not in etcd's member list")
        if member.is_learner:
            _etcd(ctx).member_promote(member.id)

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"{ctx.step.arguments['host']} is still a learner")

    def rollback(self, ctx: StepContext) -> None:
        if self.is_done(ctx):
            _withdraw_new_member(ctx, f"start-member-{ctx.step.arguments['host']}")


def _flag_value(servers: object) -> str:
    assert isinstance(servers, list)
    return ",".join(str(s) for s in servers)


class RepointApiserver(StepKind):
    name = "apiserver-etcd-servers"

    def _value(self, ctx: StepContext) -> str:
        return _flag_value(ctx.step.arguments["etcd_servers"])

    def is_done(self, ctx: StepContext) -> bool:
        access = _access(ctx)
        if not access.cluster.host(str(ctx.step.arguments["host"])).has(Role.MASTER):
            return True  # a later step of the plan retired this master (a resumed migration): nothing to repoint
        if ctx.step.arguments.get("stopped_by") and apiserver.running_flags(access, access.cluster, _host(ctx)) is None:
            return True  # stopped for good by that later step (a resumed migration): nothing to repoint
        # a later step's list counts too: resume must not go back to an earlier one
        accepted = [_flag_value(servers) for servers in ctx.step.arguments.get("accepted") or [ctx.step.arguments["etcd_servers"]]]  # type: ignore[union-attr]
        return apiserver.flag_in_effect(access, access.cluster, _host(ctx), "etcd-servers", accepted)

    def apply(self, ctx: StepContext) -> None:
        access, host = _access(ctx), _host(ctx)
        apiserver.change_flag(access, access.cluster, host, "etcd-servers", self._value(ctx), _backed_up(ctx, host))

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"the apiserver on {_host(ctx).name} does not run with the new --etcd-servers "
                                  "or is not back in every load balancer")

    def rollback(self, ctx: StepContext) -> None:
        access, host = _access(ctx), _host(ctx)
        apiserver.restore_and_put_back(access, access.cluster, host, "etcd-servers", _backed_up(ctx, host))


class MoveLeader(StepKind):
    name = "etcd-move-leader"
    nothing_to_undo = True
    retryable = (EtcdError,)
    retry_budget = 5

    def is_done(self, ctx: StepContext) -> bool:
        member = step_member(ctx)
        return member is None or read_etcd_state(_etcd(ctx)).leader_id != member.id

    def apply(self, ctx: StepContext) -> None:
        member = step_member(ctx)
        if member is not None:
            prefer = tuple(str(u) for u in ctx.step.arguments.get("to_peer_urls") or [])  # type: ignore[union-attr]
            move_leadership_off(ctx, member, prefer)

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"{ctx.step.arguments['host']} still leads")

    def rollback(self, ctx: StepContext) -> None:
        """Leadership stays where it went: any healthy voter may lead."""


class RemoveMember(StepKind):
    name = "etcd-remove-member"

    def is_done(self, ctx: StepContext) -> bool:
        return step_member(ctx) is None

    def apply(self, ctx: StepContext) -> None:
        member = step_member(ctx)
        if member is not None:
            _retry_membership(lambda: _etcd(ctx).member_remove(member.id), lambda: self.is_done(ctx),
                              f"removing {member_label(member)}")

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"{ctx.step.arguments['host']} is still an etcd member")

    def rollback(self, ctx: StepContext) -> None:
        raise KubehaError(f"a removed member cannot be put back automatically: add {ctx.step.arguments['host']} "
                          "again with `kubeha etcd add`")


class StopMember(StepKind):
    name = "etcd-stop-member"

    def is_done(self, ctx: StepContext) -> bool:
        access, host = _access(ctx), _host(ctx)
        return (not etcd_hosts.member_process_running(access, access.cluster, host)
                and not etcd_hosts.data_dir_holds_member(access, access.cluster, host))

    def apply(self, ctx: StepContext) -> None:
        access, host = _access(ctx), _host(ctx)
        etcd_hosts.stop_member(access, access.cluster, host, _backed_up(ctx, host))
        if etcd_hosts.data_dir_holds_member(access, access.cluster, host):
            etcd_hosts.retire_member_data(access, access.cluster, host, ctx.plan.operation_id)

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"etcd still runs on {_host(ctx).name} or its data dir is still in place")

    def rollback(self, ctx: StepContext) -> None:
        raise KubehaError(f"etcd on {ctx.step.arguments['host']} was removed from the cluster; it is not restarted")


class UpdateInventory(StepKind):
    name = "inventory-update"

    def _path(self, ctx: StepContext) -> Path:
        return Path(str(ctx.step.arguments["path"]))

    def _backup_path(self, ctx: StepContext) -> Path:
        path = self._path(ctx)
        # an operation that rewrites the inventory more than once keeps each step's "before"
        suffix = "" if ctx.step.id == "update-inventory" else f".{ctx.step.id}"
        return path.with_name(f"{path.name}.{ctx.plan.operation_id}{suffix}.bak")

    def is_done(self, ctx: StepContext) -> bool:
        # a later rewrite of the same plan has done this one's job too
        accepted = ctx.step.arguments.get("accepted") or [ctx.step.arguments["digest"]]
        path = self._path(ctx)
        return path.exists() and inventory_digest(path.read_text()) in accepted  # type: ignore[operator]

    def apply(self, ctx: StepContext) -> None:
        path, backup = self._path(ctx), self._backup_path(ctx)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        if path.exists() and not backup.exists():
            _write_atomically(backup, path.read_bytes(), mode)
        _write_atomically(path, str(ctx.step.arguments["content"]).encode(), mode)
        self._reload(ctx)

    def _reload(self, ctx: StepContext) -> None:
        """The steps after this one see the cluster as the file now says it is."""
        _access(ctx).use_inventory(load_inventory(self._path(ctx)))

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"{self._path(ctx)} does not hold the new inventory")

    def rollback(self, ctx: StepContext) -> None:
        backup = self._backup_path(ctx)
        if backup.exists():
            _write_atomically(self._path(ctx), backup.read_bytes(), backup.stat().st_mode & 0o777)
            self._reload(ctx)


def _write_atomically(path: Path, content: bytes, mode: int) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(partial, mode)
    os.replace(partial, path)


KINDS = (TakeSnapshot(), AddMember(), StartMember(), PromoteMember(), RepointApiserver(), MoveLeader(),
         RemoveMember(), StopMember(), UpdateInventory(), RepointCalico())
for _kind in KINDS:
    registry.add_kind(_kind)


# ---- reading what planning needs --------------------------------------------------------------


def read_facts(access: ClusterAccess, change: MembershipChange) -> EtcdFacts:
    cluster = access.cluster
    state = read_etcd_state(_shared_client(access))
    if state.error:
        raise KubehaError(f"etcd of cluster {cluster.name} cannot be read: {state.error}")
    unhealthy = tuple(f"{member_label(m)}: {state.why_unhealthy(m)}" for m in state.members if not state.healthy(m))
    versions = [s.version for s in state.statuses.values() if isinstance(s, EtcdStatus) and s.version]
    servers: dict[str, tuple[str, ...]] = {}
    for master in cluster.masters:
        if master.name in access.connect_errors:
            continue
        flags = apiserver.file_flags(access, cluster, master) or {}
        if flags.get("etcd-servers"):
            servers[master.name] = tuple(flags["etcd-servers"].split(","))
    involved = [*change.adds, *change.removes, *cluster.masters]
    unreachable = {h.name: str(access.connect_errors[h.name]) for h in involved if h.name in access.connect_errors}
    reachable = [h for h in change.adds if h.name not in unreachable]
    with_data = frozenset(h.name for h in reachable if etcd_hosts.data_dir_holds_member(access, cluster, h))
    running = frozenset(h.name for h in reachable if etcd_hosts.member_process_running(access, cluster, h))
    calico = read_calico_config(access)
    return EtcdFacts(members=state.members, leader_id=state.leader_id, unhealthy=unhealthy,
                     version=min(versions, key=_version_key) if versions else "3.5.0",
                     apiserver_etcd_servers=servers, new_hosts_with_data=with_data,
                     new_hosts_running_etcd=running, unreachable=unreachable,
                     calico_endpoints=calico.endpoints, calico_configmap=calico.configmap is not None,
                     calico_hosts=tuple(calico.files))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


# ---- the operations ---------------------------------------------------------------------------


class EtcdMembershipOperation(Operation):
    registry = registry

    def change(self, cluster: Cluster, arguments: Mapping[str, str]) -> MembershipChange:
        raise NotImplementedError

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        self.change(inventory.cluster, arguments)

    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        cluster = inventory.cluster
        change = self.change(cluster, arguments)
        facts = read_facts(access, change)
        after = inventory.model_copy(update={"cluster": cluster_after(cluster, change)})
        inventory_after = dump_inventory(after)
        return membership_plan(
            operation=self.name, operation_id=new_operation_id(self.name), arguments=arguments, cluster=cluster,
            change=change, facts=facts, inventory_digest=inventory_digest(inventory_path.read_text()),
            inventory_path=inventory_path.resolve(), inventory_after=inventory_after,
            inventory_after_digest=inventory_digest(inventory_after),
            snapshot_dir=default_journal_path().parent / "snapshots", now=datetime.now(timezone.utc))

    def view_factory(self, access: ClusterAccess, plan: Plan) -> ViewFactory:
        return cluster_view_factory(access)

    def etcd_endpoints(self, plan: Plan, inventory: Inventory) -> tuple[str, ...]:
        cluster = inventory.cluster
        involved = [cluster.host(str(step.arguments["host"])) for step in plan.steps
                    if step.kind in (AddMember.name, RemoveMember.name)]
        return tuple(dict.fromkeys([*cluster.etcd_client_urls(), *(client_url(h) for h in involved)]))

    def inventory_matches(self, plan: Plan, digest: str) -> bool:
        after = [step.arguments.get("digest") for step in plan.steps if step.kind == UpdateInventory.name]
        return digest == plan.inventory_digest or digest in after


class EtcdMigrate(EtcdMembershipOperation):
    """``replace``: OLD=NEW[,OLD=NEW...]: each NEW joins, each OLD leaves."""

    name = "etcd-migrate"

    def change(self, cluster: Cluster, arguments: Mapping[str, str]) -> MembershipChange:
        pairs = parse_pairs(_argument(arguments, "replace"))
        return membership_change(cluster, adds=[new for _, new in pairs], removes=[old for old, _ in pairs])


class EtcdAdd(EtcdMembershipOperation):
    """``host``: HOST[,HOST...] join."""

    name = "etcd-add"

    def change(self, cluster: Cluster, arguments: Mapping[str, str]) -> MembershipChange:
        return membership_change(cluster, adds=parse_hosts(_argument(arguments, "host")))


class EtcdRemove(EtcdMembershipOperation):
    """``host``: HOST[,HOST...] leave."""

    name = "etcd-remove"

    def change(self, cluster: Cluster, arguments: Mapping[str, str]) -> MembershipChange:
        return membership_change(cluster, removes=parse_hosts(_argument(arguments, "host")))


def _argument(arguments: Mapping[str, str], name: str) -> str:
    value = arguments.get(name)
    if not value:
        raise InputError(f"missing argument {name!r}")
    return value


OPERATIONS: tuple[Operation, ...] = (EtcdMigrate(), EtcdAdd(), EtcdRemove())
