"""`change-endpoint`: the step kinds, the look at the cluster that planning needs, and the
operation. The plan comes from ``endpoint_plan`` (pure)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities, reissue_apiserver_cert
from kubeha.discover.configs import VrrpInstance, parse_keepalived_conf
from kubeha.errors import HostError, InputError
from kubeha.hosts import CommandFailed
from kubeha.hosts.facts import ipv4_addresses_on
from kubeha.inventory import Inventory, dump_inventory
from kubeha.kube import configmap_value, objects_naming, set_configmap_value
from kubeha.lb.apply import VIP_TIMEOUT, read_lb_state, vip_holding
from kubeha.model import Cluster, Host, Layout
from kubeha.operations.base import refuse_input
from kubeha.operations.endpoint_plan import (
    ENDPOINT_CONFIGMAPS, OPERATION, EndpointFacts, EndpointRequest, change_endpoint_plan, moved_vip, names_endpoint,
    parse_request, replace_endpoint, request_refusals, vip_text, vip_url, with_vips,
)
from kubeha.operations.masters import (
    HostFilesStep, MasterViewOperation, configure_lbs, registry as masters_registry, repoint_naming, step_access,
    step_host,
)
from kubeha.operations.nodes import kube_api, kube_proxy_servers
from kubeha.operations.nodes_plan import KUBE_PROXY_CONFIGMAP, KUBE_PROXY_NAMESPACE, RepointRequest
from kubeha.operations.nodes_plan import parse_request as parse_repoint_request
from kubeha.pki import SubjectAltNames, sans_of
from kubeha.plan import Plan, StepContext, StepKind, StepNotVerified
from kubeha.plan import inventory_digest, new_operation_id
from kubeha.render.kubeconfig import kubeconfig_servers, rewrite_kubeconfig_server

_POLL = 0.5


def _strings(ctx: StepContext, name: str) -> list[str]:
    return [str(v) for v in ctx.step.arguments.get(name) or []]  # type: ignore[union-attr]


class LbVips(StepKind):
    """Arguments: ``vips`` (address, port, vrid each), the endpoint first: the LB configs
    rendered for them (on the interface of the inventory's VIP)."""

    name = "lb-vips"

    def _cluster(self, ctx: StepContext, vips: list[Mapping[str, object]] | None = None) -> Cluster:
        """The cluster serving ``vips`` (default: the step's)."""
        cluster = step_access(ctx).cluster
        base = cluster.vip
        assert base is not None  # planning refused a cluster without one
        chosen = vips if vips is not None else ctx.step.arguments["vips"]
        return with_vips(cluster, [base.model_copy(update={"address": IPv4Address(str(v["address"])),
                                                           "port": int(str(v["port"])), "vrid": int(str(v["vrid"]))})
                                   for v in chosen])  # type: ignore[union-attr]

    def _unheld(self, access: ClusterAccess, cluster: Cluster) -> list[str]:
        """Why a VIP is not held by exactly one LB host: empty when each is."""
        holders = {str(v.address): {h for h, held in vip_holding(access, v).items() if held.ok and held.value}
                   for v in cluster.vips}
        # VIPs of different VRRP instances may be held by different LB hosts: each runs haproxy
        return [f"{address} held by {', '.join(sorted(h)) or 'no host'}" for address, h in holders.items()
                if len(h) != 1]

    def _pending(self, access: ClusterAccess, cluster: Cluster) -> bool:
        state = read_lb_state(access, cluster)
        return bool(state.plan(cluster).pending)

    def is_done(self, ctx: StepContext) -> bool:
        # served as this step or a later one of the plan leaves it (a resume must not serve
        # a retired VIP again)
        access = step_access(ctx)
        accepted = ctx.step.arguments.get("accepted") or [ctx.step.arguments["vips"]]
        return any(not self._pending(access, cluster) and not self._unheld(access, cluster)
                   for cluster in (self._cluster(ctx, vips) for vips in accepted))  # type: ignore[union-attr]

    def apply(self, ctx: StepContext) -> None:
        access, cluster = step_access(ctx), self._cluster(ctx)
        configure_lbs(ctx, cluster, down=set())
        deadline = time.monotonic() + VIP_TIMEOUT
        while (unheld := self._unheld(access, cluster)) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if unheld:
            raise StepNotVerified(f"after {VIP_TIMEOUT:g} s: {'; '.join(unheld)}; see `journalctl -u keepalived`")

    def verify(self, ctx: StepContext) -> None:
        access, cluster = step_access(ctx), self._cluster(ctx)
        if self._pending(access, cluster):
            raise StepNotVerified("an LB config differs from the one rendered for "
                                  + ", ".join(vip_text(v) for v in cluster.vips))
        unheld = self._unheld(access, cluster)
        if unheld:
            raise StepNotVerified("; ".join(unheld))

    def rollback(self, ctx: StepContext) -> None:
        configure_lbs(ctx, step_access(ctx).cluster, down=set())  # the VIPs the inventory names


class ApiserverSans(HostFilesStep):
    """Arguments: ``host``, ``add`` and ``remove`` (IP addresses): the apiserver cert of
    ``host`` reissued with them (the running apiserver reads it when it restarts)."""

    name = "apiserver-sans"
    left_says = "has an apiserver cert without the SANs asked for:"

    def _sans(self, ctx: StepContext, name: str) -> SubjectAltNames:
        return SubjectAltNames(ip_addresses=tuple(IPv4Address(a) for a in _strings(ctx, name)))

    def left(self, ctx: StepContext) -> list[str]:
        access, host = step_access(ctx), step_host(ctx)
        cert = access.cluster.paths.apiserver.cert
        pem = access.get_file(host, cert)
        if pem is None:
            return [str(cert)]
        sans = sans_of(pem)
        done = (all(sans.covers(a) for a in _strings(ctx, "add"))
                and not any(sans.covers(a) for a in _strings(ctx, "remove")))
        return [] if done else [str(cert)]

    def apply(self, ctx: StepContext) -> None:
        access, host = step_access(ctx), step_host(ctx)
        ctx.took_backup(host.name, ctx.step_backup_set)
        reissue_apiserver_cert(access, host, load_authorities(access, host), add=self._sans(ctx, "add"),
                               remove=self._sans(ctx, "remove"), backup=ctx.step_backup_set)


class ControlPlaneKubeconfigs(HostFilesStep):
    """Arguments: ``host``, ``paths``, ``server``, ``previous``: each of those kubeconfigs that
    names ``previous`` names ``server`` instead."""

    name = "control-plane-kubeconfig-server"
    left_says = "still names the old server in"

    def _naming_previous(self, ctx: StepContext) -> dict[str, str]:
        access, host = step_access(ctx), step_host(ctx)
        previous = str(ctx.step.arguments["previous"])
        found = {}
        for path in _strings(ctx, "paths"):
            content = access.get_file(host, path)
            if content is not None and previous in kubeconfig_servers(content.decode()):
                found[path] = content.decode()
        return found

    def left(self, ctx: StepContext) -> list[str]:
        return list(self._naming_previous(ctx))

    def apply(self, ctx: StepContext) -> None:
        access, host = step_access(ctx), step_host(ctx)
        ctx.took_backup(host.name, ctx.step_backup_set)
        server, previous = str(ctx.step.arguments["server"]), str(ctx.step.arguments["previous"])
        for path, text in self._naming_previous(ctx).items():
            access.put_file(host, path, rewrite_kubeconfig_server(text, server, only_from=[previous]).encode(),
                            backup=ctx.step_backup_set)


class ConfigMapEndpoint(StepKind):
    """Arguments: ``namespace``, ``name``, ``key``, ``previous`` and ``now`` (``address:port``
    each): the endpoint named in that ConfigMap value."""

    name = "configmap-endpoint"

    def _where(self, ctx: StepContext) -> tuple[str, str, str]:
        a = ctx.step.arguments
        return str(a["namespace"]), str(a["name"]), str(a["key"])

    def _value(self, ctx: StepContext) -> str | None:
        return configmap_value(kube_api(step_access(ctx)), *self._where(ctx))

    def _set(self, ctx: StepContext, old: str, new: str) -> None:
        value = self._value(ctx)
        if value is not None and names_endpoint(value, old):
            set_configmap_value(kube_api(step_access(ctx)), *self._where(ctx), replace_endpoint(value, old, new))

    def is_done(self, ctx: StepContext) -> bool:
        value = self._value(ctx)
        return value is not None and not names_endpoint(value, str(ctx.step.arguments["previous"])) \
            and names_endpoint(value, str(ctx.step.arguments["now"]))

    def apply(self, ctx: StepContext) -> None:
        self._set(ctx, str(ctx.step.arguments["previous"]), str(ctx.step.arguments["now"]))

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            namespace, name, key = self._where(ctx)
            raise StepNotVerified(f"ConfigMap {namespace}/{name} {key} does not name {ctx.step.arguments['now']} only")

    def rollback(self, ctx: StepContext) -> None:
        self._set(ctx, str(ctx.step.arguments["now"]), str(ctx.step.arguments["previous"]))


# the master operations' kinds (restarts, node repoints, the inventory) and checks, and these
registry = masters_registry.extended(LbVips(), ApiserverSans(), ControlPlaneKubeconfigs(), ConfigMapEndpoint())


# ---- reading what planning needs, and the operation --------------------------------------------


def read_endpoint_facts(access: ClusterAccess, request: EndpointRequest | None = None) -> EndpointFacts:
    """What the endpoint's clients name; with ``request`` (a change of it) also what it needs."""
    cluster = access.cluster
    p = cluster.paths
    paths = [str(p.admin_kubeconfig), str(p.controller_manager_kubeconfig), str(p.scheduler_kubeconfig)]
    kubeconfigs: dict[str, dict[str, tuple[str, ...]]] = {}
    for master in cluster.masters:
        if master.name in access.connect_errors:
            continue
        found = {}
        for path in paths:
            content = access.get_file(master, path)
            if content is not None:
                try:
                    found[path] = tuple(kubeconfig_servers(content.decode()))
                except InputError as e:
                    raise HostError(f"{master.name}: {path}: {e}") from None
        kubeconfigs[master.name] = found
    api = kube_api(access)
    configmaps = {where: configmap_value(api, *where) for where in ENDPOINT_CONFIGMAPS}
    lb_hosts = [h for h in cluster.lb_hosts if h.name not in access.connect_errors] if cluster.vip else []
    return EndpointFacts(kubeconfigs=kubeconfigs, configmaps=configmaps,
                         kube_proxy_configmap=kube_proxy_servers(access),
                         unreachable={name: str(e) for name, e in access.connect_errors.items()},
                         vip_interfaces={h.name: _vip_interface(access, h) for h in lb_hosts},
                         keepalived={h.name: _keepalived(access, h) for h in lb_hosts},
                         old_vip_users=_old_vip_users(access) if request and request.retire_san else ())


def _vip_interface(access: ClusterAccess, host: Host) -> tuple[IPv4Interface, ...]:
    """The addresses on the VIP's interface of ``host``; none when it has no such interface."""
    assert access.cluster.vip is not None
    try:
        return tuple(a.address for a in access.fact(host, ipv4_addresses_on(access.cluster.vip.interface)))
    except CommandFailed as e:
        if "does not exist" in e.stderr_tail:  # `ip`: Device "eth1" does not exist.
            return ()
        raise


def _keepalived(access: ClusterAccess, host: Host) -> tuple[VrrpInstance, ...]:
    """The VRRP instances of ``host``'s keepalived.conf (none without one)."""
    path = access.cluster.paths.keepalived_conf
    content = access.get_file(host, path)
    try:
        return parse_keepalived_conf(content.decode()) if content is not None else ()
    except (ValueError, UnicodeDecodeError) as e:
        raise HostError(f"{host.name}: {path}: cannot read it: {e}") from None


def _old_vip_users(access: ClusterAccess) -> tuple[str, ...]:
    """The API objects naming the old VIP that the plan does not change."""
    assert access.cluster.vip is not None
    changed = [*((namespace, name) for namespace, name, _ in ENDPOINT_CONFIGMAPS),
               (KUBE_PROXY_NAMESPACE, KUBE_PROXY_CONFIGMAP)]
    return tuple(line for line in objects_naming(access.kube(), [str(access.cluster.vip.address)])
                 if not any(line.startswith(f"ConfigMap {namespace}/{name} ") for namespace, name in changed))


class ChangeEndpoint(MasterViewOperation):
    """``vip``: the new VIP; ``port``: its port (default: the current one); ``vrid``: its
    VRRP router id (default: the next free one); ``retire_san``: take the old VIP out of the
    apiserver certs at the end; ``batch``, ``failure_budget``, ``node_timeout``: as for
    `repoint-nodes`, for the nodes whose kubeconfigs name the old VIP."""

    name = OPERATION
    registry = registry

    def _nodes_request(self, cluster: Cluster, request: EndpointRequest,
                       arguments: Mapping[str, str]) -> RepointRequest | None:
        """`repoint-nodes`' request for the nodes naming the old VIP; None without a VIP."""
        if cluster.vip is None:
            return None
        return parse_repoint_request(
            {"server": vip_url(moved_vip(cluster, request)),
             **{k: arguments[k] for k in ("batch", "failure_budget", "node_timeout") if arguments.get(k)}})

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        cluster = inventory.cluster
        request = parse_request(cluster, arguments)
        self._nodes_request(cluster, request, arguments)
        refuse_input(self.name, request_refusals(cluster, request))

    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        cluster = inventory.cluster
        request = parse_request(cluster, arguments)
        old = cluster.vip
        nodes = self._nodes_request(cluster, request, arguments)
        operation_id, digest = new_operation_id(self.name), inventory_digest(inventory_path.read_text())
        nodes_steps = [] if old is None or nodes is None else repoint_naming(  # no VIP: planning refuses
            access, operation_id, [str(old.address)], nodes, digest, served_later=True, what="the old VIP")
        return change_endpoint_plan(
            operation_id=operation_id, arguments=arguments, cluster=cluster, request=request,
            facts=read_endpoint_facts(access, request), nodes_steps=nodes_steps, inventory_digest=digest,
            inventory_path=inventory_path.resolve(),
            render_inventory=lambda after: dump_inventory(inventory.model_copy(update={"cluster": after})),
            now=datetime.now(timezone.utc))

    def left_to_do(self, access: ClusterAccess, plan: Plan, inventory: Inventory) -> list[str]:
        """API objects still naming the old VIP (kubeha changes only the ones kubeadm keeps),
        and on kubeasz the deploy machine's hosts file."""
        served = next(s.arguments["vips"] for s in plan.steps if s.kind == LbVips.name)
        address = str(served[0]["address"])  # type: ignore[index]  # the old VIP, served first
        left = [f"{line}: the old VIP; update it" for line in objects_naming(access.kube(), [address])]
        if inventory.cluster.layout is Layout.KUBEASZ:
            left.append(f"kubeasz's hosts file on the machine ezctl runs on (/etc/kubeasz/clusters/"
                        f"{inventory.cluster.name}/hosts): set the ex_lb VIP to {inventory.cluster.vip.address if inventory.cluster.vip else ''}")
        return left


OPERATIONS = (ChangeEndpoint(),)
