"""Checks of the ways to the apiservers: each apiserver, the VIP, haproxy on each LB host,
the node-local proxies, and every kubeconfig that clients use."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import PurePosixPath
from typing import Any

from kubeha.checks.facts import Readiness
from kubeha.checks.hosts import gathered, runs_node_proxy, unreadable
from kubeha.checks.result import CheckResult, failed, passed, verdict
from kubeha.checks.snapshot import ClusterSnapshot, HostSnapshot, address_of
from kubeha.discover.configs import HaproxyConfig, NodeProxyConfig
from kubeha.model import Cluster
from kubeha.render import Backend


def _readiness(subject: str, via: str, r: Readiness) -> CheckResult:
    if r.ready:
        return passed("apiserver ready", subject, f"/readyz ok {via}")
    return failed("apiserver ready", subject, f"/readyz {via} failed: {r.detail}")


def check_apiserver_ready(snapshot: ClusterSnapshot) -> list[CheckResult]:
    """/readyz of each apiserver directly and through the VIP (from here), through haproxy
    on each LB host and through each node-local proxy (on that host)."""
    cluster = snapshot.cluster
    results = [_readiness(p.url, p.via, p.readiness) for p in snapshot.apiservers]
    for h in gathered(snapshot):
        results += [_readiness(f"{h.name} haproxy :{port}", "through haproxy", r)
                    for port, r in sorted(h.lb_readiness.items())]
        if h.node_proxy_readiness is not None:
            results.append(_readiness(f"{h.name} node-local proxy :{cluster.node_local_port}",
                                      "through the node-local proxy", h.node_proxy_readiness))
    return results


def check_vip_holder(snapshot: ClusterSnapshot) -> list[CheckResult]:
    results = []
    for vip in snapshot.cluster.vips:
        holders = [h.name for h in gathered(snapshot) if any(a.address.ip == vip.address for a in h.addresses)]
        subject = f"VIP {vip.address}"
        if len(holders) == 1:
            results.append(passed("VIP holder", subject, f"held by {holders[0]}"))
        elif not holders:
            results.append(failed("VIP holder", subject, "no host holds the VIP: keepalived is down or its "
                                                         "check fails on every LB host"))
        else:
            results.append(failed("VIP holder", subject, f"held by {' and '.join(holders)} at once: split "
                                                         f"brain, VRRP adverts do not get through"))
    return results


def _lb_hosts(snapshot: ClusterSnapshot) -> list[HostSnapshot]:
    cluster = snapshot.cluster
    return [h for h in gathered(snapshot) if cluster.vip is not None and h.host in cluster.lb_hosts]


def _no_config(name: str, h: HostSnapshot, key: str, path: PurePosixPath) -> CheckResult:
    return failed(name, h.name, f"cannot read {path}: {unreadable(h, key) or 'no such file'}")


def check_keepalived(snapshot: ClusterSnapshot) -> list[CheckResult]:
    """Every LB host's keepalived serves every VIP in the inventory's VRRP router."""
    path = snapshot.cluster.paths.keepalived_conf
    results = []
    for h in _lb_hosts(snapshot):
        if h.keepalived is None:
            results.append(_no_config("keepalived", h, "keepalived", path))
            continue
        problems = []
        for vip in snapshot.cluster.vips:
            serving = [i for i in h.keepalived if any(a == vip.address for a, _ in i.addresses)]
            if not serving:
                problems.append(f"no vrrp_instance holds the VIP {vip.address}")
            elif any(i.vrid != vip.vrid for i in serving):
                problems.append(f"the VIP {vip.address} is in virtual_router_id "
                                f"{', '.join(str(i.vrid) for i in serving)}, the inventory says {vip.vrid}")
        results.append(verdict("keepalived", h.name, problems, ", ".join(
            f"VIP {v.address} in virtual_router_id {v.vrid}" for v in snapshot.cluster.vips)))
    return results


def backend_problems(cluster: Cluster, servers: Iterable[Backend]) -> list[str]:
    """Servers that are no master's apiserver (stale), and masters no server points at."""
    wanted = {(str(m.address), cluster.apiserver_port): m.name for m in cluster.masters}
    have = {(s.address, s.port) for s in servers}
    problems = [f"stale backend {a}:{p} is no master's apiserver" for a, p in sorted(have - set(wanted))]
    problems += [f"master {wanted[at]} ({at[0]}:{at[1]}) is no backend" for at in wanted if at not in have]
    return problems


def _proxies(snapshot: ClusterSnapshot, name: str, hosts: Iterable[HostSnapshot], key: str, path: PurePosixPath,
             judge: Callable[[Any], tuple[list[str], str]]) -> list[CheckResult]:
    """Each host's proxy config (its snapshot field ``key``): ``judge``'s problems and its
    backends' problems, else ``judge``'s ok."""
    results = []
    for h in hosts:
        config = getattr(h, key)
        if config is None:
            results.append(_no_config(name, h, key, path))
            continue
        problems, ok = judge(config)
        results.append(verdict(name, h.name, problems + backend_problems(snapshot.cluster, config.servers), ok))
    return results


def check_lb_backends(snapshot: ClusterSnapshot) -> list[CheckResult]:
    cluster = snapshot.cluster

    def judge(config: HaproxyConfig) -> tuple[list[str], str]:
        return ([f"haproxy does not listen on the VIP port {v.port}" for v in cluster.vips if v.port not in config.ports],
                f"haproxy :{','.join(map(str, config.ports))} -> the {len(cluster.masters)} masters")

    return _proxies(snapshot, "LB backends", _lb_hosts(snapshot), "haproxy", cluster.paths.haproxy_cfg, judge)


def check_node_proxy_backends(snapshot: ClusterSnapshot) -> list[CheckResult]:
    cluster = snapshot.cluster

    def judge(config: NodeProxyConfig) -> tuple[list[str], str]:
        port = config.listen_port
        return ([f"listens on :{port}, the inventory says :{cluster.node_local_port}"]
                if port != cluster.node_local_port else [],
                f"127.0.0.1:{port} -> the {len(cluster.masters)} masters")

    hosts = [h for h in gathered(snapshot) if runs_node_proxy(cluster, h)]
    return _proxies(snapshot, "node-local proxy", hosts, "node_proxy", cluster.paths.node_proxy_conf, judge)


def _own_apiserver(cluster: Cluster, h: HostSnapshot) -> set[str]:
    port = cluster.apiserver_port
    return {f"https://{h.host.address}:{port}", f"https://127.0.0.1:{port}", f"https://localhost:{port}"}


def check_kubeconfigs(snapshot: ClusterSnapshot) -> list[CheckResult]:
    """Every kubeconfig on every host uses an HA endpoint: a VIP, or the node-local proxy
    where one runs. kubeadm's controller-manager and scheduler on a master may use their
    own apiserver: they fail over by leader election, not by endpoint."""
    cluster = snapshot.cluster
    paths = cluster.paths
    local_components = {str(paths.controller_manager_kubeconfig), str(paths.scheduler_kubeconfig)}
    masters = {str(m.address): m.name for m in cluster.masters}
    results = []
    for h in gathered(snapshot):
        proxy = h.node_proxy is not None
        ha = {cluster.endpoint, *(f"https://{v.address}:{v.port}" for v in cluster.vips)}
        if proxy:
            ha.add(cluster.node_local_endpoint)
        expected = cluster.node_local_endpoint if proxy else cluster.endpoint
        problems = [f"cannot read {key.removeprefix('kubeconfig ')}: {why}"
                    for key, why in h.unreadable.items() if key.startswith("kubeconfig ")]
        for path, servers in sorted(h.kubeconfigs.items()):
            allowed = ha | (_own_apiserver(cluster, h) if h.host in cluster.masters and path in local_components
                            else set())
            for server in servers:
                if server.rstrip("/") in allowed:
                    continue
                at = address_of(server)
                master = masters.get(at[0]) if at else None
                what = f"only master {master}" if master else "no HA endpoint"
                problems.append(f"{path} points at {server} ({what}), not {expected}")
        if problems:
            results += [failed("kubeconfigs", h.name, p) for p in problems]
        elif h.kubeconfigs:
            results.append(passed("kubeconfigs", h.name, f"{len(h.kubeconfigs)} kubeconfigs use an HA endpoint"))
    return results


ENDPOINT_CHECKS = (check_apiserver_ready, check_vip_holder, check_keepalived, check_lb_backends,
                   check_node_proxy_backends, check_kubeconfigs)
