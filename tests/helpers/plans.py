"""Clusters, facts and plans for the pure tests of the planners and the plan simulator: every
planner called as its operation calls it, with facts made up instead of read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import urlsplit

from kubeha.etcd.gateway import EtcdMember
from kubeha.lb.plan import node_proxy_hosts
from kubeha.model import Cluster, EtcdTopology, Host, Layout, Role, VirtualIP
from kubeha.operations.endpoint_plan import EndpointFacts, change_endpoint_plan, moved_vip, parse_request, vip_url
from kubeha.operations.etcd_plan import EtcdFacts, membership_change, membership_plan, parse_pairs
from kubeha.operations.masters_plan import (
    add_master_plan, master_change, migrate_masters_plan, migration_pairs, remove_master_plan,
)
from kubeha.operations.nodes_plan import NodeFiles, RepointFacts, RepointRequest, node_hosts, repoint_plan
from kubeha.operations.restart_plan import parse_components, parse_flag_settings, restart_hosts, rolling_restart_plan
from kubeha.operations.simulator import ApiFacts, model_from_facts, simulate
from kubeha.plan import Plan, Step

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
_FILES = dict(inventory_digest="sha256:a", inventory_path=Path("/tmp/cluster.yaml"), now=NOW)


# ---- clusters ----------------------------------------------------------------------------------


def lab_cluster(layout: Layout = Layout.KUBEADM, masters: int = 3, spares: int = 3) -> Cluster:
    hosts = [Host(name=f"master{i}", address=IPv4Address(f"10.0.0.{10 + i}"), roles=frozenset({Role.MASTER, Role.ETCD}))
             for i in range(1, masters + 1)]
    hosts += [Host(name=f"spare{i}", address=IPv4Address(f"10.0.0.{20 + i}")) for i in range(1, spares + 1)]
    hosts += [Host(name="worker1", address=IPv4Address("10.0.0.31"), roles=frozenset({Role.WORKER}))]
    return Cluster(name="t", layout=layout, hosts=tuple(hosts), vip=VirtualIP(address=IPv4Address("10.0.0.100")))


def topology(*, masters: int, etcd: int, stacked: bool, lbs: int, workers: int, spares: int = 3,
             layout: Layout = Layout.KUBEADM, vip: bool = True) -> Cluster:
    """``masters`` masters (with ``stacked``, each an etcd member: ``etcd`` is ignored), else
    ``etcd`` etcd hosts of their own; ``lbs`` dedicated LB hosts; workers; spares with no role."""
    def hosts(prefix: str, count: int, base: int, roles: set[Role]) -> list[Host]:
        return [Host(name=f"{prefix}{i}", address=IPv4Address(f"10.0.{base}.{i}"), roles=frozenset(roles))
                for i in range(1, count + 1)]
    made = hosts("master", masters, 1, {Role.MASTER, Role.ETCD} if stacked else {Role.MASTER})
    made += [] if stacked else hosts("etcd", etcd, 2, {Role.ETCD})
    made += hosts("lb", lbs, 3, {Role.LB}) + hosts("spare", spares, 4, set()) + hosts("worker", workers, 5, {Role.WORKER})
    return Cluster(name="t", layout=layout, hosts=tuple(made), network="10.0.0.0/16",
                   etcd_topology=EtcdTopology.STACKED if stacked else EtcdTopology.EXTERNAL,
                   vip=VirtualIP(address=IPv4Address("10.0.0.100")) if vip else None)


# ---- facts -------------------------------------------------------------------------------------


def member(host: Host, learner: bool = False, started: bool = True) -> EtcdMember:
    return EtcdMember(id=int(host.address), name=host.name if started else "",
                      peer_urls=(f"https://{host.address}:2380",),
                      client_urls=(f"https://{host.address}:2379",) if started else (), is_learner=learner)


def facts_for(cluster: Cluster, leader: str = "master1", **overrides) -> EtcdFacts:
    members = tuple(member(h) for h in cluster.etcd_members)
    leader_id = member(cluster.host(leader)).id
    defaults = dict(members=members, leader_id=leader_id, version="3.4.23",
                    apiserver_etcd_servers={m.name: ("https://127.0.0.1:2379",) for m in cluster.masters})
    return EtcdFacts(**{**defaults, **overrides})


def _local(cluster: Cluster, host: Host) -> str:
    """Where the components of ``host`` reach an apiserver of their own: its node-local proxy,
    else its own apiserver."""
    return cluster.node_local_endpoint if host in node_proxy_hosts(cluster) else f"https://{host.address}:6443"


def api_facts_for(cluster: Cluster, holder: str | None = None, **nodes: tuple[str, ...]) -> ApiFacts:
    """The API side as docs/architecture.md says kubeha's layouts have it: a node's kubelet and
    kube-proxy on its node-local proxy (kubeadm masters: on the endpoint); admin on the
    endpoint, controller-manager and scheduler on the master's own apiserver (kubeasz: its
    proxy); kubeadm's kube-proxy ConfigMap on the endpoint. ``holder``: the VIP's holder
    (default: the first LB host); ``nodes``: servers some nodes name instead."""
    node = {h.name: (cluster.node_local_endpoint if h in node_proxy_hosts(cluster) else cluster.endpoint,)
            for h in node_hosts(cluster)}
    planes = {m.name: (cluster.endpoint, _local(cluster, m)) for m in cluster.masters}
    first = cluster.lb_hosts[0].name if cluster.lb_hosts else None
    return ApiFacts(vip_holders={str(v.address): holder or first for v in cluster.vips}, nodes={**node, **nodes},
                    control_planes=planes,
                    kube_proxy_configmap=(cluster.endpoint,) if cluster.layout is Layout.KUBEADM else None)


def verdicts_of(cluster: Cluster, plan: Plan, facts: EtcdFacts | None = None, api: ApiFacts | None = None):
    """The plan played through the simulator from ``facts`` (default: every member healthy,
    master1 leading) and ``api`` (default: as the layout has it)."""
    return simulate(plan, cluster, model_from_facts(cluster, facts or facts_for(cluster), api or api_facts_for(cluster)))


# ---- plans, as each operation makes them -----------------------------------------------------------


def plan_for(cluster: Cluster, adds=(), removes=(), facts: EtcdFacts | None = None) -> Plan:
    """An etcd membership change."""
    change = membership_change(cluster, adds=adds, removes=removes)
    return membership_plan(operation="etcd-migrate", operation_id="etcd-migrate-1", arguments={}, cluster=cluster,
                           change=change, facts=facts or facts_for(cluster), inventory_after="after",
                           inventory_after_digest="sha256:b", snapshot_dir=Path("/tmp/snapshots"), **_FILES)


def restart_plan(cluster: Cluster, components: str = "", hosts: str = "", leader_host: str | None = None,
                 unhealthy: Sequence[str] = (), set_flags: str = "") -> Plan:
    chosen = parse_components(components)
    return rolling_restart_plan(operation="rolling-restart", operation_id="rolling-restart-1", arguments={},
                                cluster=cluster, components=chosen, hosts=restart_hosts(cluster, chosen, hosts),
                                leader_host=leader_host, unhealthy_members=unhealthy, inventory_digest="sha256:a",
                                now=NOW, flags=parse_flag_settings(set_flags))


def repoint_for(cluster: Cluster, api: ApiFacts, request: RepointRequest, arguments: dict[str, str] | None = None) -> Plan:
    """repoint-nodes, on nodes whose kubeconfigs are as ``api`` says."""
    facts = RepointFacts(nodes={n: NodeFiles(kubelet=urls, kube_proxy=urls) for n, urls in api.nodes.items()},
                         kube_proxy_configmap=api.kube_proxy_configmap)
    return repoint_plan(operation_id="op-1", arguments=arguments or {}, cluster=cluster, request=request, facts=facts,
                        inventory_digest="sha256:a", now=NOW)


def nodes_steps(cluster: Cluster, api: ApiFacts, addresses: Sequence[str], server: str,
                skip: Sequence[str] = ()) -> list[Step]:
    """`repoint-nodes`' steps for the nodes (but ``skip``) naming one of ``addresses``, as
    ``repoint_naming`` plans them."""
    stale = tuple(n for n, urls in api.nodes.items()
                  if n not in skip and any(urlsplit(u).hostname in addresses for u in urls))
    return list(repoint_for(cluster, api, RepointRequest(server=server, hosts=stale)).steps) if stale else []


def master_plan(cluster: Cluster, name: str, adding: bool, facts: EtcdFacts | None = None,
                leader_elect=None, api: ApiFacts | None = None) -> Plan:
    """add-master or remove-master (its nodes repointed off it first, as the operation does)."""
    host, change = master_change(cluster, name, adding)
    common = dict(operation="add-master" if adding else "remove-master", operation_id="op-1",
                  arguments={"host": name}, cluster=cluster, host=host, change=change,
                  facts=facts or facts_for(cluster), inventory_after="after", inventory_after_digest="sha256:b",
                  snapshot_dir=Path("/tmp/snapshots"), **_FILES)
    if adding:
        return add_master_plan(leader_elect=leader_elect or {}, **common)
    first = nodes_steps(cluster, api or api_facts_for(cluster), [str(host.address)], cluster.endpoint, [name])
    return remove_master_plan(nodes_first=first, **common)


def migrate(cluster: Cluster, replace: str, facts: EtcdFacts | None = None, leader_elect=None,
            api: ApiFacts | None = None) -> Plan:
    """migrate-masters (the nodes naming an old master repointed first, as the operation does)."""
    pairs = migration_pairs(cluster, parse_pairs(replace))
    olds = [old for old, _ in pairs]
    first = nodes_steps(cluster, api or api_facts_for(cluster), [str(h.address) for h in olds], cluster.endpoint,
                        [h.name for h in olds])
    return migrate_masters_plan(
        operation="migrate-masters", operation_id="op-1", arguments={"replace": replace}, cluster=cluster,
        pairs=pairs, facts=facts or facts_for(cluster), leader_elect=leader_elect or {}, nodes_first=first,
        render_inventory=lambda after: " ".join(f"{h.name}={','.join(sorted(r.value for r in h.roles))}"
                                                for h in after.hosts),
        snapshot_dir=Path("/tmp/snapshots"), **_FILES)


def endpoint_plan(cluster: Cluster, arguments: dict[str, str], api: ApiFacts | None = None) -> Plan:
    """change-endpoint, with the facts its operation would read from a cluster that is as ``api`` says."""
    api = api or api_facts_for(cluster)
    p = cluster.paths
    old = cluster.endpoint
    kubeconfigs = {m: {str(p.admin_kubeconfig): urls[:1], str(p.controller_manager_kubeconfig): urls[1:],
                       str(p.scheduler_kubeconfig): urls[1:]} for m, urls in api.control_planes.items()}
    configmaps = {("kube-public", "cluster-info", "kubeconfig"): f"clusters:\n- cluster:\n    server: {old}\n"}
    facts = EndpointFacts(kubeconfigs=kubeconfigs, configmaps=configmaps, kube_proxy_configmap=api.kube_proxy_configmap)
    request = parse_request(cluster, arguments)
    steps = [] if cluster.vip is None else nodes_steps(cluster, api, [str(cluster.vip.address)],
                                                       vip_url(moved_vip(cluster, request)))
    return change_endpoint_plan(
        operation_id="op-1", arguments=arguments, cluster=cluster, request=request, facts=facts, nodes_steps=steps,
        render_inventory=lambda after: f"vips {','.join(str(v.address) for v in after.vips)}", **_FILES)


def without(plan: Plan, *ids_or_kinds: str) -> Plan:
    return plan.model_copy(update={"steps": tuple(s for s in plan.steps
                                                  if s.id not in ids_or_kinds and s.kind not in ids_or_kinds)})
