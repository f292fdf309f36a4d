"""``rolling-restart``: restart control-plane components one host and one component at a
time without a failed request through the VIP or any load balancer.

The plan comes from ``restart_plan`` (pure); the restart itself and the proof that it
happened from ``components``; the safety checks are the etcd and load-balancer checks of
``etcd_view``, judged on a fresh view before every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from kubeha.access import ClusterAccess
from kubeha.errors import HostError, KubehaError
from kubeha.etcd.gateway import member_label
from kubeha.inventory import Inventory
from kubeha.lb.drain import backend_states, put_back, take_out
from kubeha.model import Cluster, Host
from kubeha.operations import components
from kubeha.operations.base import Operation, refuse_input
from kubeha.operations.etcd import MoveLeader, move_leadership_off, step_member
from kubeha.operations.etcd_plan import ETCD_HEALTHY, LB_SPARE, VIP_HELD, live_member
from kubeha.operations.etcd_view import (
    cluster_view_factory, etcd_healthy, lb_spare, majority_while_down, read_etcd_state, vip_held,
)
from kubeha.operations.restart_plan import (
    MAJORITY_WHILE_DOWN, parse_components, parse_flag_settings, parse_timeout, restart_hosts, restart_refusals,
    rolling_restart_plan,
)
from kubeha.plan import Plan, Registry, Step, StepContext, StepKind, StepNotVerified, ViewFactory
from kubeha.plan import inventory_digest, new_operation_id

# how long a failed restart's rollback waits for the apiserver to be ready before leaving it out
ROLLBACK_READY_TIMEOUT = 15.0

registry = Registry()
for _name, _check in ((ETCD_HEALTHY, etcd_healthy), (MAJORITY_WHILE_DOWN, majority_while_down),
                      (LB_SPARE, lb_spare), (VIP_HELD, vip_held)):
    registry.step_check(_name)(_check)


class RestartComponent(StepKind):
    name = "restart-component"

    def leaves_nothing_to_undo(self, step: Step) -> bool:
        return not step.arguments.get("flags")  # a bare restart leaves nothing to take back

    @staticmethod
    def _parts(ctx: StepContext) -> tuple[ClusterAccess, Cluster, Host, str]:
        access: ClusterAccess = ctx.cluster
        return access, access.cluster, access.cluster.host(str(ctx.step.arguments["host"])), \
            str(ctx.step.arguments["component"])

    @staticmethod
    def _timeout(ctx: StepContext) -> float:
        return float(ctx.step.arguments.get("timeout") or components.RESTART_TIMEOUT)  # type: ignore[arg-type]

    @staticmethod
    def _token(ctx: StepContext) -> str:
        return components.restart_token(ctx.plan.operation_id, ctx.step.id)

    def _back_in(self, ctx: StepContext) -> bool:
        access, cluster, host, _ = self._parts(ctx)
        return not ctx.step.arguments.get("drain") or backend_states(access, cluster).in_everywhere(host.name)

    def is_done(self, ctx: StepContext) -> bool:
        # a unit's restart leaves no mark: a resumed run restarts it again, which is harmless
        access, cluster, host, component = self._parts(ctx)
        if not components.runs_as_static_pod(cluster, host, component):
            return False
        since = components.static_pod_restarted_at(access, cluster, host, component, self._token(ctx))
        return (since is not None and components.restarted(access, cluster, host, component, since) is None
                and self._back_in(ctx))

    def apply(self, ctx: StepContext) -> None:
        access, cluster, host, component = self._parts(ctx)
        backup = ctx.step_backup_set
        ctx.took_backup(host.name, backup)
        if component == components.ETCD:
            member = step_member(ctx)
            if member is not None:
                move_leadership_off(ctx, member)  # leadership may have come here since the plan
        if ctx.step.arguments.get("drain"):
            take_out(access, cluster, host.name, backup)
        flags = ctx.step.arguments.get("flags") or None
        since = components.restart(access, cluster, host, component, self._token(ctx), backup, flags)  # type: ignore[arg-type]
        components.wait_restarted(access, cluster, host, component, since, self._timeout(ctx))
        if ctx.step.arguments.get("drain"):
            put_back(access, cluster, host.name, backup)

    def verify(self, ctx: StepContext) -> None:
        access, cluster, host, component = self._parts(ctx)
        why = components.why_unhealthy(access, cluster, host, component)
        if why is not None:
            raise StepNotVerified(f"{component} on {host.name} is not healthy: {why}")
        flags: dict[str, str] = ctx.step.arguments.get("flags") or {}  # type: ignore[assignment]
        running = (components.process(access, cluster, host, component).flags or {}) if flags else {}
        unlike = [f"--{flag}={value}" for flag, value in flags.items() if running.get(flag) != value]
        if unlike:
            raise StepNotVerified(f"{component} on {host.name} does not run with {', '.join(unlike)}")
        if not self._back_in(ctx):
            raise StepNotVerified(f"the apiserver on {host.name} is not back in every load balancer")

    def rollback(self, ctx: StepContext) -> None:
        """The flags it set taken back (out of every load balancer again when it drains: asked
        for by `kubeha rollback`, the restart was done; the file restored, the component
        restarted on it), then the drain: the apiserver goes back in if it is ready; otherwise
        it stays out, so that no request is sent to it."""
        access, cluster, host, component = self._parts(ctx)
        if ctx.step.arguments.get("flags"):
            if ctx.step.arguments.get("drain"):
                take_out(access, cluster, host.name, ctx.step_backup_set)
            components.restart_on_restored_file(access, cluster, host, component, ctx.step_backup_set,
                                                self._timeout(ctx))
        if not ctx.step.arguments.get("drain") or self._back_in(ctx):
            return
        try:
            put_back(access, cluster, host.name, ctx.step_backup_set, timeout=ROLLBACK_READY_TIMEOUT)
        except HostError as e:  # its cause is the failed restart's, said already
            raise KubehaError(f"the apiserver on {host.name} is not ready, so it stays out of every load "
                              "balancer") from e


for _kind in (RestartComponent(), MoveLeader()):
    registry.add_kind(_kind)


class RollingRestart(Operation):
    """``component``: C[,C...] (default the apiserver, controller-manager and scheduler);
    ``host``: H[,H...] (default every host running one of them); ``timeout``: seconds each
    component gets to come back (default 120); ``set``: FLAG=VALUE[,...] set in the one
    component's file before each restart."""

    name = "rolling-restart"
    registry = registry

    def _request(self, cluster: Cluster, arguments: Mapping[str, str]
                 ) -> tuple[tuple[str, ...], list[Host], float, dict[str, str]]:
        chosen = parse_components(arguments.get("component"))
        return (chosen, restart_hosts(cluster, chosen, arguments.get("host")), parse_timeout(arguments.get("timeout")),
                parse_flag_settings(arguments.get("set")))

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        chosen, hosts, _, flags = self._request(inventory.cluster, arguments)
        refuse_input(self.name, restart_refusals(inventory.cluster, chosen, hosts, unhealthy_members=(), flags=flags))

    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        cluster = inventory.cluster
        chosen, hosts, timeout, flags = self._request(cluster, arguments)
        leader_host, unhealthy = None, []
        if components.ETCD in chosen:
            state = read_etcd_state(access.etcd())
            if state.error:
                raise KubehaError(f"etcd of cluster {cluster.name} cannot be read: {state.error}")
            unhealthy = [f"{member_label(m)}: {state.why_unhealthy(m)}" for m in state.members if not state.healthy(m)]
            leader_host = next((h.name for h in cluster.etcd_members
                                if (m := live_member(state.members, cluster, h)) and m.id == state.leader_id), None)
        return rolling_restart_plan(
            operation=self.name, operation_id=new_operation_id(self.name), arguments=arguments, cluster=cluster,
            components=chosen, hosts=hosts, leader_host=leader_host, unhealthy_members=unhealthy,
            inventory_digest=inventory_digest(inventory_path.read_text()), now=datetime.now(timezone.utc),
            timeout=timeout, flags=flags)

    def view_factory(self, access: ClusterAccess, plan: Plan) -> ViewFactory:
        return cluster_view_factory(access)


OPERATIONS: tuple[Operation, ...] = (RollingRestart(),)
