"""One immutable snapshot of everything `kubeha check` judges, gathered once.

Checks never reach the cluster: they read a ``ClusterSnapshot``, so every decision comes
from the same moment's facts and each check is tested on hand-built snapshots.
``gather_snapshot`` reads each host in one SSH round trip (plus a tiny clock probe), and
asks etcd and the apiservers in parallel with it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from kubeha.access import Address, ClusterAccess, url_address
from kubeha.checks.facts import (
    FSTAB_BAD_LINES, UID, CertFile, DiskSpace, FactFailed, FstabLine, Readiness, cert_files, disk_space,
    gather_facts, parsed_file, readiness, readyz_through,
)
from kubeha.discover.configs import (
    Flags, HaproxyConfig, NodeProxyConfig, VrrpInstance, parse_flags, parse_haproxy_cfg,
    parse_keepalived_conf, parse_node_proxy_conf,
)
from kubeha.discover.discover import component_command, component_file
from kubeha.errors import KubehaError
from kubeha.etcd.gateway import EtcdAlarm, EtcdMember, EtcdStatus
from kubeha.hosts import Fact, HostConnection, SudoRefused
from kubeha.hosts.facts import IPV4_ADDRESSES, InterfaceAddress, unit_states
from kubeha.model import Cluster, Host, Layout
from kubeha.render import kubeconfig_servers
from kubeha.render.controlplane import ETCD_CLIENT_PORT

T = TypeVar("T")

# Asked about on every host: which ones must be active depends on its roles and configs.
UNITS = ("kubelet", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
         "haproxy", "keepalived", "nginx")
PARALLEL_REQUESTS = 16  # etcd and apiserver requests in flight at once


@dataclass(frozen=True)
class HostSnapshot:
    host: Host
    ssh_error: str | None = None  # no connection: nothing else was gathered
    sudo_error: str | None = None  # connected, but commands could not run as root
    uid: int | None = None
    clock_skew: float | None = None  # seconds the host's clock is ahead (negative: behind)
    etcd_disk: DiskSpace | None = None
    fstab_bad_lines: tuple[FstabLine, ...] = ()
    kubeconfigs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # path -> its servers
    apiserver_flags: Flags | None = None
    etcd_flags: Flags | None = None
    haproxy: HaproxyConfig | None = None
    keepalived: tuple[VrrpInstance, ...] | None = None
    node_proxy: NodeProxyConfig | None = None
    addresses: tuple[InterfaceAddress, ...] = ()
    units: Mapping[str, str] = field(default_factory=dict)
    certs: tuple[CertFile, ...] = ()
    lb_readiness: Mapping[int, Readiness] = field(default_factory=dict)  # haproxy port -> /readyz
    node_proxy_readiness: Readiness | None = None
    unreadable: Mapping[str, str] = field(default_factory=dict)  # fact key -> why it has no value

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def gathered(self) -> bool:
        return self.ssh_error is None and self.sudo_error is None


@dataclass(frozen=True)
class MemberHealth:
    host: str
    endpoint: str
    status: EtcdStatus | None  # None: the member did not answer
    healthy: bool  # a linearizable read through this member succeeded
    error: str | None = None


@dataclass(frozen=True)
class EtcdSnapshot:
    members: tuple[EtcdMember, ...] = ()
    member_list_error: str | None = None
    health: tuple[MemberHealth, ...] = ()
    alarms: tuple[EtcdAlarm, ...] = ()
    alarms_error: str | None = None


@dataclass(frozen=True)
class ApiProbe:
    """``GET /readyz`` from this machine with the admin credentials."""

    via: str  # "directly", "through the VIP"
    url: str
    readiness: Readiness


@dataclass(frozen=True)
class ClusterSnapshot:
    cluster: Cluster
    taken_at: dt.datetime
    hosts: tuple[HostSnapshot, ...]
    etcd: EtcdSnapshot
    apiservers: tuple[ApiProbe, ...]

    def host(self, name: str) -> HostSnapshot:
        return next(h for h in self.hosts if h.name == name)


# ---- host facts ----------------------------------------------------------------------

KUBECONFIG_PATHS = ("admin_kubeconfig", "kubelet_kubeconfig", "kube_proxy_kubeconfig",
                    "controller_manager_kubeconfig", "scheduler_kubeconfig")


def _component_flags(layout: Layout, component: str) -> Fact[Flags | None]:
    path = component_file(layout, component)
    return parsed_file(path, lambda text: parse_flags(component_command(layout, text, str(path))))


def host_facts(cluster: Cluster, host: Host) -> dict[str, Fact[Any]]:
    """What to read on ``host``, by snapshot field (kubeconfigs and readiness by their own keys)."""
    paths = cluster.paths
    facts: dict[str, Fact[Any]] = {
        "uid": UID,
        "addresses": IPV4_ADDRESSES,
        "units": unit_states(*UNITS),
        "fstab_bad_lines": FSTAB_BAD_LINES,
        "certs": cert_files(paths.pki_dir, paths.etcd_pki_dir),
        "node_proxy": parsed_file(paths.node_proxy_conf, parse_node_proxy_conf),
        "node_proxy_readiness": readyz_through(cluster.node_local_port, paths.node_proxy_conf),
    }
    for attr in KUBECONFIG_PATHS:
        path = getattr(paths, attr)
        facts[f"kubeconfig {path}"] = parsed_file(path, lambda text: tuple(kubeconfig_servers(text)))
    if host in cluster.masters:
        facts["apiserver_flags"] = _component_flags(cluster.layout, "kube-apiserver")
    if host in cluster.etcd_members:
        facts["etcd_flags"] = _component_flags(cluster.layout, "etcd")
        facts["etcd_disk"] = disk_space(paths.etcd_data_dir)
    if cluster.vip is not None and host in cluster.lb_hosts:
        facts["haproxy"] = parsed_file(paths.haproxy_cfg, parse_haproxy_cfg)
        facts["keepalived"] = parsed_file(paths.keepalived_conf, parse_keepalived_conf)
        for port in sorted({v.port for v in cluster.vips}):
            facts[f"lb {port}"] = readyz_through(port, paths.haproxy_cfg)
    return facts


def parse_clock(stdout: str) -> float:
    return float(stdout.strip())


CLOCK: Fact[float] = Fact("clock", "date +%s.%N", parse_clock)


def clock_skew(host_time: float, asked_at: float, answered_at: float) -> float:
    """How far the host's clock is off at least: 0 when its time falls inside the round trip."""
    if host_time < asked_at:
        return host_time - asked_at
    return max(0.0, host_time - answered_at)


async def _clock_skew(conn: HostConnection) -> float:
    asked_at = time.time()
    result = await conn.run(CLOCK.command)
    return clock_skew(CLOCK.parse(result.stdout), asked_at, time.time())


def host_snapshot(host: Host, values: Mapping[str, Any], skew: float | None) -> HostSnapshot:
    """A host's snapshot from its gathered fact values (FactFailed where a fact has none)."""
    unreadable = {k: str(v) for k, v in values.items() if isinstance(v, FactFailed)}
    good = {k: v for k, v in values.items() if not isinstance(v, FactFailed) and v is not None}
    fields: dict[str, Any] = {k: v for k, v in good.items() if " " not in k}
    fields["kubeconfigs"] = {k.removeprefix("kubeconfig "): v for k, v in good.items()
                             if k.startswith("kubeconfig ")}
    fields["lb_readiness"] = {int(k.removeprefix("lb ")): v for k, v in good.items() if k.startswith("lb ")}
    return HostSnapshot(host=host, clock_skew=skew, unreadable=unreadable, **fields)


def gather_hosts(access: ClusterAccess) -> tuple[HostSnapshot, ...]:
    cluster = access.cluster

    async def gather(conn: HostConnection) -> tuple[dict[str, Any], float]:
        facts = host_facts(cluster, conn.host)
        values, skew = await asyncio.gather(gather_facts(conn, facts), _clock_skew(conn))
        return values, skew

    outcomes = access.run_all(gather)
    snapshots = []
    for host in cluster.hosts:
        outcome = outcomes[host.name]
        if isinstance(outcome.error, SudoRefused):
            snapshots.append(HostSnapshot(host=host, sudo_error=str(outcome.error)))
        elif outcome.error is not None:
            snapshots.append(HostSnapshot(host=host, ssh_error=str(outcome.error)))
        else:
            values, skew = outcome.value
            snapshots.append(host_snapshot(host, values, skew))
    return tuple(snapshots)


# ---- etcd and the apiservers ---------------------------------------------------------


def address_of(url: str) -> Address | None:
    """The (host, port) of a URL; None when it is not one."""
    try:
        return url_address(url)
    except KubehaError:
        return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def member_health(access: ClusterAccess, host: Host) -> MemberHealth:
    endpoint = f"https://{host.address}:{ETCD_CLIENT_PORT}"
    try:
        client = access.etcd_member(host)
        status = client.status(endpoint)
    except KubehaError as e:
        return MemberHealth(host.name, endpoint, None, False, _one_line(e))
    try:
        client.get("health")  # what `etcdctl endpoint health` reads: it needs a leader and quorum
    except KubehaError as e:
        return MemberHealth(host.name, endpoint, status, False, _one_line(e))
    return MemberHealth(host.name, endpoint, status, True)


def _attempt(call: Callable[[], T]) -> tuple[T | None, str | None]:
    try:
        return call(), None
    except KubehaError as e:
        return None, _one_line(e)


def probe_readyz(access: ClusterAccess, via: str, url: str) -> ApiProbe:
    try:
        response = access.http(url).get("/readyz")
    except (KubehaError, httpx.HTTPError) as e:
        return ApiProbe(via, url, Readiness(False, _one_line(e)))
    return ApiProbe(via, url, readiness(response.status_code, response.text))


def apiserver_urls(cluster: Cluster) -> list[tuple[str, str]]:
    """(via, url) of each apiserver directly, then of each VIP."""
    urls = [(f"directly ({m.name})", f"https://{m.address}:{cluster.apiserver_port}") for m in cluster.masters]
    urls += [("through the VIP", f"https://{v.address}:{v.port}") for v in cluster.vips]
    return urls


def gather_snapshot(access: ClusterAccess) -> ClusterSnapshot:
    """Everything the checks judge, read in parallel: hosts over SSH, etcd, the apiservers."""
    cluster = access.cluster
    taken_at = dt.datetime.now(dt.timezone.utc)
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        hosts = pool.submit(gather_hosts, access)
        members = [pool.submit(member_health, access, h) for h in cluster.etcd_members]
        member_list = pool.submit(_attempt, lambda: tuple(access.etcd().member_list()))
        alarms = pool.submit(_attempt, lambda: access.etcd().alarms())
        probes = [pool.submit(probe_readyz, access, via, url) for via, url in apiserver_urls(cluster)]
        (listed, list_error), (active, alarm_error) = member_list.result(), alarms.result()
        etcd = EtcdSnapshot(members=listed or (), member_list_error=list_error,
                            health=tuple(m.result() for m in members),
                            alarms=active or (), alarms_error=alarm_error)
        return ClusterSnapshot(cluster=cluster, taken_at=taken_at, hosts=hosts.result(), etcd=etcd,
                               apiservers=tuple(p.result() for p in probes))
