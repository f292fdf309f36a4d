"""Planning `change-endpoint`: the API endpoint (the VIP and its port) moved without an
outage. Pure: from the inventory, the request and one look at the cluster.

The order makes every moment safe for clients of either endpoint:

1. the new VIP served beside the old one (keepalived holds both, haproxy listens on both
   ports);
2. each apiserver's cert reissued with the new address, then the apiserver restarted out
   of the load balancers, one master at a time: a client of the new VIP must find it in
   the cert before anything points there;
3. the inventory names the new VIP (the old one kept as an extra VIP), so that what
   follows, a resume, the probe and kubeha itself use the new endpoint;
4. every consumer of the old endpoint repointed: the control-plane kubeconfigs of each
   master (admin, controller-manager, scheduler: a component whose file changes is
   restarted), the kubelet and kube-proxy kubeconfigs of the nodes that name it (as
   `repoint-nodes` does it: batches, a failure budget), the kube-proxy ConfigMap,
   kube-public/cluster-info, kubeadm-config's controlPlaneEndpoint;
5. the old VIP retired (and, with ``retire_san``, its address taken out of each
   apiserver's cert, again one master at a time), the inventory without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from kubeha.discover.configs import VrrpInstance
from kubeha.errors import InputError
from kubeha.inventory import cluster_inconsistencies
from kubeha.model import Cluster, Host, VirtualIP
from kubeha.operations.components import APISERVER, CONTROLLER_MANAGER, SCHEDULER
from kubeha.operations.etcd_plan import accept_later_values, inventory_step
from kubeha.operations.nodes_plan import configmap_step, node_hosts
from kubeha.operations.restart_plan import restart_step
from kubeha.plan import Change, ChangeKind, Plan, PlanError, Step
from kubeha.plan import inventory_digest as inventory_text_digest

OPERATION = "change-endpoint"
# ConfigMaps that name the endpoint in a kubeadm cluster: (namespace, name, key)
ENDPOINT_CONFIGMAPS = (("kube-public", "cluster-info", "kubeconfig"),
                       ("kube-system", "kubeadm-config", "ClusterConfiguration"))


@dataclass(frozen=True)
class EndpointRequest:
    address: IPv4Address
    port: int
    retire_san: bool = False
    vrid: int | None = None  # the new VIP's VRRP instance; None: the next one free


@dataclass(frozen=True)
class EndpointFacts:
    """What planning needs from the live cluster, read once before planning."""

    # master -> {kubeconfig path: its servers} for admin, controller-manager, scheduler
    kubeconfigs: Mapping[str, Mapping[str, tuple[str, ...]]]
    configmaps: Mapping[tuple[str, str, str], str | None] = field(default_factory=dict)  # ENDPOINT_CONFIGMAPS
    kube_proxy_configmap: tuple[str, ...] | None = None  # its servers; None: absent
    unreachable: Mapping[str, str] = field(default_factory=dict)  # host -> why SSH failed
    # LB host -> the IPv4 addresses (with their prefix) on the VIP's interface; a host not
    # listed was not asked
    vip_interfaces: Mapping[str, tuple[IPv4Interface, ...]] = field(default_factory=dict)
    # LB host -> the VRRP instances of its keepalived.conf
    keepalived: Mapping[str, tuple[VrrpInstance, ...]] = field(default_factory=dict)
    # what names the old VIP and the plan leaves as it is (API objects kubeha does not change)
    old_vip_users: tuple[str, ...] = ()


def parse_request(cluster: Cluster, arguments: Mapping[str, str]) -> EndpointRequest:
    """The operator's arguments, validated before any host is asked."""
    text = str(arguments.get("vip") or "").strip()
    if not text:
        raise InputError("--vip is required: the new VIP, an unused address of the hosts' subnet")
    try:
        address = IPv4Address(text)
    except ValueError:
        raise InputError(f"--vip {text!r} is not an IPv4 address") from None
    port_text = str(arguments.get("port") or "").strip()
    if not port_text:
        port = cluster.vip.port if cluster.vip is not None else 8443
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InputError(f"--port {port_text!r} is not a TCP port (1-65535)")
    else:
        port = int(port_text)
    vrid_text = str(arguments.get("vrid") or "").strip()
    if vrid_text and (not vrid_text.isdigit() or not 1 <= int(vrid_text) <= 255):
        raise InputError(f"--vrid {vrid_text!r} is not a VRRP router id (1-255)")
    return EndpointRequest(address, port, str(arguments.get("retire_san") or "").lower() in ("1", "true", "yes"),
                           int(vrid_text) if vrid_text else None)


def request_refusals(cluster: Cluster, request: EndpointRequest) -> list[str]:
    """Every reason the inventory alone gives not to make the change: pure, so that the CLI
    refuses it before any host is touched."""
    reasons = []
    old = cluster.vip
    if old is None:
        return [f"cluster {cluster.name} has no VIP to move: set vip in the inventory and run `kubeha lb apply`"]
    if request.address == old.address and request.port == old.port:
        reasons.append(f"the endpoint is {old.address}:{old.port} already")
    elif request.address == old.address:
        reasons.append(f"only the port changes ({old.port} -> {request.port}): give a new VIP too")
    for host in cluster.hosts:
        if host.address == request.address:
            reasons.append(f"{request.address} is the address of {host.name}: choose a free address")
    if any(v.address == request.address for v in cluster.extra_vips):
        reasons.append(f"{request.address} is an extra VIP already: take it out of extra_vips first")
    if request.vrid is not None and request.vrid in {v.vrid for v in cluster.vips}:
        reasons.append(f"VRID {request.vrid} is the VRRP instance of a VIP already: the new VIP needs its own")
    if cluster.network is not None and request.address not in cluster.network:
        reasons.append(f"{request.address} is outside the hosts' subnet {cluster.network}: keepalived can only "
                       "hold an address of the LB hosts' own subnet")
    if len(cluster.masters) < 2:
        reasons.append("kube-apiserver on the only master cannot restart with its new cert without an outage: "
                       "add a master first")
    if not reasons:  # the reasons above say it better; the inventory's own checks find the rest
        both = with_vips(cluster, [moved_vip(cluster, request), old, *cluster.extra_vips])
        reasons += [f"the inventory would then be refused: {line}" for line in cluster_inconsistencies(both)]
    return reasons


def endpoint_refusals(cluster: Cluster, request: EndpointRequest, facts: EndpointFacts) -> list[str]:
    """Every reason the change must not be planned: the inventory's, then the live cluster's."""
    reasons = request_refusals(cluster, request)
    if cluster.vip is None:
        return reasons
    reasons += [f"{name} is not reachable over SSH: {why}" for name, why in facts.unreachable.items()
                if name in {h.name for h in (*cluster.masters, *cluster.lb_hosts)}]
    reasons += [why for host, addresses in facts.vip_interfaces.items()
                if (why := interface_reason(cluster, request, host, addresses))]
    taken = foreign_vrids(cluster, facts)
    vrid = moved_vip(cluster, request, taken).vrid
    if vrid in taken:
        reasons.append(f"VRID {vrid} is in use by {taken[vrid]}: two VRRP routers with one id on a segment "
                       "take each other's addresses; choose another --vrid")
    if why := san_reason(cluster, request, facts):
        reasons.append(why)
    return reasons


def foreign_vrids(cluster: Cluster, facts: EndpointFacts) -> dict[int, str]:
    """The VRRP router ids of keepalived instances on the LB hosts that hold none of the
    cluster's VIPs (another service's, or another cluster's), each with where it is."""
    ours = {v.address for v in cluster.vips}
    found: dict[int, str] = {}
    for host, instances in facts.keepalived.items():
        for instance in instances:
            held = [a for a, _ in instance.addresses]
            if instance.vrid is not None and not ours & set(held):
                found.setdefault(instance.vrid, f"a keepalived instance on {host} holding "
                                                f"{', '.join(map(str, held)) or 'no address'}")
    return found


def interface_reason(cluster: Cluster, request: EndpointRequest, host: str,
                     addresses: Sequence[IPv4Interface]) -> str | None:
    """Why LB host ``host`` cannot hold the new VIP on the VIP's interface (``addresses``
    are that interface's): it has no address there, the VIP is outside their subnets, or an
    address there is the new VIP already (something holds it)."""
    assert cluster.vip is not None
    interface = cluster.vip.interface
    if not addresses:
        return f"{host} has no IPv4 address on {interface}, the VIP's interface: keepalived cannot hold a VIP there"
    if any(a.ip == request.address for a in addresses):
        return f"{request.address} is on {interface} of {host} already: it is in use"
    if not any(request.address in a.network for a in addresses):
        subnets = ", ".join(sorted({str(a.network) for a in addresses}))
        return (f"{request.address} is outside the subnet of {interface} on {host} ({subnets}): keepalived can "
                "only hold an address of the LB hosts' own subnet")
    return None


def san_reason(cluster: Cluster, request: EndpointRequest, facts: EndpointFacts) -> str | None:
    """Why the old VIP must stay in the apiserver certs: ``retire_san`` while something may
    still name it (its SAN is the way back for it: the old VIP served again)."""
    if not request.retire_san or cluster.vip is None:
        return None
    unknown = [f"{name} (its kubeconfigs could not be read: {why})" for name, why in facts.unreachable.items()
               if name in {h.name for h in node_hosts(cluster)}]
    users = [*facts.old_vip_users, *unknown]
    if not users:
        return None
    return (f"--retire-san would take {cluster.vip.address} out of the apiserver certs, yet it may still be in use "
            f"({'; '.join(users)}): repoint them first, or leave --retire-san out")


def moved_vip(cluster: Cluster, request: EndpointRequest, taken: Collection[int] = ()) -> VirtualIP:
    """The new VIP: on the old one's interface, in a VRRP instance of its own (the next VRID
    free by default, neither the cluster's nor one of ``taken``), so that serving and
    retiring either never changes the other's instance: a backup whose instance lists other
    addresses than its master's adverts drops them and takes the addresses too."""
    old = cluster.vip
    assert old is not None
    used = {v.vrid for v in cluster.vips} | set(taken)
    vrid = request.vrid or next(v for v in [*range(old.vrid + 1, 256), *range(1, old.vrid)] if v not in used)
    return old.model_copy(update={"address": request.address, "port": request.port, "vrid": vrid})


def with_vips(cluster: Cluster, vips: Sequence[VirtualIP]) -> Cluster:
    """``cluster`` serving ``vips``, the first one as its endpoint."""
    return cluster.model_copy(update={"vip": vips[0], "extra_vips": tuple(vips[1:])})


def vip_text(vip: VirtualIP) -> str:
    return f"{vip.address}:{vip.port}"


def names_endpoint(text: str, endpoint: str) -> bool:
    """Whether ``text`` names ``endpoint`` (``address:port``) as a whole (10.0.0.1:84 is not
    in 10.0.0.11:8443)."""
    return re.search(_whole(endpoint), text) is not None


def replace_endpoint(text: str, old: str, new: str) -> str:
    return re.sub(_whole(old), new, text)


def _whole(endpoint: str) -> str:
    return rf"(?<![\w.]){re.escape(endpoint)}(?!\d)"


def _change(kind: ChangeKind, target: str, host: str | None, before: str | None, after: str | None) -> Change:
    return Change(kind=kind, target=target, host=host, before=before, after=after)


def lb_vips_step(cluster: Cluster, vips: Sequence[VirtualIP], step_id: str, what: str) -> Step:
    """Every LB host's configs rendered for ``vips`` (keepalived holds them all, haproxy
    listens on their ports)."""
    served = ", ".join(vip_text(v) for v in cluster.vips)
    wanted = ", ".join(vip_text(v) for v in vips)
    return Step(
        id=step_id, kind="lb-vips", title=f"{what}: the load balancers serve {wanted}",
        hosts=tuple(h.name for h in cluster.lb_hosts),
        changes=tuple(_change(ChangeKind.VIP, str(cluster.paths.keepalived_conf), h.name, served, wanted)
                      for h in cluster.lb_hosts)
        + tuple(_change(ChangeKind.FILE, str(cluster.paths.haproxy_cfg), h.name, "ports of " + served,
                        "ports of " + wanted) for h in cluster.lb_hosts),
        verification=f"each of {wanted} is held by one LB host; every LB config is as rendered",
        rollback="the LB configs of the inventory's VIPs written back and reloaded",
        estimated_seconds=15,
        arguments={"vips": [{"address": str(v.address), "port": v.port, "vrid": v.vrid} for v in vips]})


def apiserver_cert_step(cluster: Cluster, host: Host, add: Sequence[IPv4Address], remove: Sequence[IPv4Address],
                        step_id: str) -> Step:
    cert = str(cluster.paths.apiserver.cert)
    change = ", ".join([f"+{a}" for a in add] + [f"-{a}" for a in remove])
    return Step(
        id=step_id, kind="apiserver-sans", title=f"Reissue the apiserver cert of {host.name} ({change})",
        hosts=(host.name,),
        changes=(_change(ChangeKind.CERT, cert, host.name, "current SANs", change),),
        verification=f"{cert} on {host.name} names {', '.join(map(str, add)) or 'its SANs'}"
        + (f" and not {', '.join(map(str, remove))}" if remove else ""),
        rollback="the cert and key restored from the step's backup", estimated_seconds=3,
        arguments={"host": host.name, "add": [str(a) for a in add], "remove": [str(a) for a in remove]})


def kubeconfigs_step(host: Host, paths: Sequence[str], old: str, new: str) -> Step:
    return Step(
        id=f"control-plane-kubeconfigs-{host.name}", kind="control-plane-kubeconfig-server",
        title=f"Point {', '.join(paths)} on {host.name} at {new}", hosts=(host.name,),
        changes=tuple(_change(ChangeKind.FILE, p, host.name, old, new) for p in paths),
        verification=f"none of them names {old}", rollback="the files restored from the step's backup",
        estimated_seconds=2, arguments={"host": host.name, "paths": list(paths), "server": new, "previous": old})


def configmap_endpoint_step(namespace: str, name: str, key: str, old: VirtualIP, new: VirtualIP) -> Step:
    return Step(
        id=f"configmap-{namespace}-{name}", kind="configmap-endpoint",
        title=f"Point ConfigMap {namespace}/{name} {key} at {vip_text(new)}",
        changes=(_change(ChangeKind.KUBE_OBJECT, f"ConfigMap {namespace}/{name} {key}", None, vip_text(old),
                         vip_text(new)),),
        verification=f"it names {vip_text(new)}, not {vip_text(old)}", rollback=f"{vip_text(old)} written back",
        estimated_seconds=2,
        arguments={"namespace": namespace, "name": name, "key": key, "previous": vip_text(old), "now": vip_text(new)})


def _kubeconfig_component(cluster: Cluster, path: str) -> str | None:
    p = cluster.paths
    return {str(p.controller_manager_kubeconfig): CONTROLLER_MANAGER, str(p.scheduler_kubeconfig): SCHEDULER}.get(path)


def vip_url(vip: VirtualIP) -> str:
    return f"https://{vip.address}:{vip.port}"


def change_endpoint_plan(*, operation_id: str, arguments: Mapping[str, str], cluster: Cluster,
                         request: EndpointRequest, facts: EndpointFacts, nodes_steps: Sequence[Step],
                         inventory_digest: str, inventory_path: Path, render_inventory: Callable[[Cluster], str],
                         now: datetime) -> Plan:
    """The plan, or PlanError naming every reason it must not be made. ``nodes_steps``:
    `repoint-nodes`' steps for the nodes whose kubeconfigs name the old endpoint."""
    reasons = endpoint_refusals(cluster, request, facts)
    if reasons:
        raise PlanError(f"{OPERATION} refused: " + "; ".join(reasons))
    old = cluster.vip
    assert old is not None
    new = moved_vip(cluster, request, foreign_vrids(cluster, facts))
    both = with_vips(cluster, [new, old, *cluster.extra_vips])
    after = with_vips(cluster, [new, *cluster.extra_vips])

    steps = [lb_vips_step(cluster, [old, *cluster.extra_vips, new], f"serve-vip-{new.address}",
                          f"Serve {vip_text(new)} beside {vip_text(old)}")]
    for master in cluster.masters:
        steps += [apiserver_cert_step(cluster, master, [new.address], [], f"apiserver-cert-{master.name}"),
                  restart_step(cluster, master, APISERVER)]
    digest = inventory_digest

    def rewrite(state: Cluster, what: str, step_id: str) -> Step:
        nonlocal digest
        text = render_inventory(state)
        step = inventory_step(inventory_path, digest, text, inventory_text_digest(text), what, step_id=step_id)
        digest = str(step.arguments["digest"])
        return step

    steps.append(rewrite(both, f"the VIP {vip_text(new)}, {vip_text(old)} kept as an extra VIP",
                         "update-inventory-new-vip"))
    for master in cluster.masters:
        paths = sorted(path for path, servers in facts.kubeconfigs.get(master.name, {}).items()
                       if vip_url(old) in servers)
        if paths:
            steps.append(kubeconfigs_step(master, paths, vip_url(old), vip_url(new)))
            steps += [restart_step(both, master, component)
                      for path in paths if (component := _kubeconfig_component(cluster, path))]
    steps += nodes_steps
    if facts.kube_proxy_configmap and vip_url(old) in facts.kube_proxy_configmap \
            and not any(s.kind == "kube-proxy-configmap-server" for s in nodes_steps):
        steps.append(configmap_step(vip_url(new), facts.kube_proxy_configmap))
    for (namespace, name, key), value in facts.configmaps.items():
        if value is not None and names_endpoint(value, vip_text(old)):
            steps.append(configmap_endpoint_step(namespace, name, key, old, new))
    steps.append(lb_vips_step(both, [new, *cluster.extra_vips], f"retire-vip-{old.address}",
                              f"Retire {vip_text(old)}"))
    steps.append(rewrite(after, f"the VIP {vip_text(new)} only", "update-inventory-old-vip-gone"))
    if request.retire_san:
        for master in cluster.masters:
            steps += [apiserver_cert_step(after, master, [], [old.address], f"apiserver-cert-{master.name}-without-old"),
                      restart_step(after, master, APISERVER).model_copy(
                          update={"id": f"restart-kube-apiserver-{master.name}-without-old"})]
    return Plan.build(operation=OPERATION, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(accept_later_values(steps)))


__all__ = [
    "ENDPOINT_CONFIGMAPS", "EndpointFacts", "EndpointRequest", "OPERATION", "change_endpoint_plan",
    "endpoint_refusals", "foreign_vrids", "interface_reason", "moved_vip", "vip_url", "names_endpoint", "parse_request",
    "replace_endpoint", "request_refusals", "san_reason", "vip_text", "with_vips",
]
