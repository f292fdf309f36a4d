"""Learn a cluster's whole control plane from one master reachable over SSH.

Three rounds, each through ``ClusterAccess``:

1. the seed master: its layout (static pod manifests, else systemd units), the flags of
   its apiserver, etcd, controller-manager and scheduler, its kubelet config, keepalived,
   haproxy and the admin kubeconfig;
2. etcd (with the client pair the apiserver's flags name) and the API (with the admin
   kubeconfig): the etcd members, the Nodes and the version;
3. every host found: its hostname, whether a master candidate runs an apiserver, and
   the node-local proxy of a worker.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePosixPath

from kubeha.access import ClusterAccess, url_address
from kubeha.discover.configs import (
    Flags, HaproxyConfig, NodeProxyConfig, VrrpInstance, kubelet_cluster_domain, manifest_command,
    parse_flags, parse_haproxy_cfg, parse_keepalived_conf, parse_node_proxy_conf, unit_exec_start,
)
from kubeha.errors import InputError
from kubeha.hosts import HostConnection
from kubeha.hosts.facts import HOSTNAME
from kubeha.inventory import Inventory, SshDefaults
from kubeha.inventory.document import CLUSTER_NAME_PATTERN
from kubeha.kube import NodeInfo, kubeconfig_credentials, list_nodes, server_version
from kubeha.model import (
    HOST_NAME_PATTERN, CertPair, Cluster, ClusterPaths, EtcdTopology, Host, Layout, LoadBalancer, Role,
    VirtualIP,
)
from kubeha.render.controlplane import KUBELET_CONFIG

COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")
_LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class SeedMaster:
    """What the seed master's files say."""

    layout: Layout
    flags: dict[str, Flags]  # component -> its flags; a component it does not run is absent
    cluster_domain: str | None
    vrrp: tuple[VrrpInstance, ...]
    haproxy: HaproxyConfig | None
    admin_server: str | None
    admin_cluster_name: str | None

    @property
    def apiserver_port(self) -> int:
        return int(self.flags.get("kube-apiserver", {}).get("secure-port",
                                                            Cluster.model_fields["apiserver_port"].default))


def component_file(layout: Layout, component: str) -> PurePosixPath:
    paths = ClusterPaths.for_layout(layout)
    if paths.manifests_dir is not None:
        return paths.manifests_dir / f"{component}.yaml"
    return paths.units_dir / f"{component}.service"


def component_command(layout: Layout, text: str, source: str) -> list[str]:
    return manifest_command(text, source) if layout is Layout.KUBEADM else unit_exec_start(text, source)


def _placeholder(address: IPv4Address) -> str:
    """A host name to connect with until the host says its own."""
    return "host-" + str(address).replace(".", "-")


def _host(address: IPv4Address, ssh: SshDefaults, roles: Iterable[Role] = (), name: str | None = None,
          node_name: str | None = None) -> Host:
    return Host(name=name or _placeholder(address), address=address, roles=frozenset(roles),
                node_name=node_name, ssh_user=ssh.user, ssh_port=ssh.port, ssh_key=ssh.key_file)


async def _read_files(conn: HostConnection, paths: Sequence[PurePosixPath]) -> dict[PurePosixPath, bytes | None]:
    return dict(zip(paths, await conn.get_files(paths)))


def _text(content: bytes | None) -> str | None:
    return None if content is None else content.decode("utf-8", "replace")


def read_seed(access: ClusterAccess, seed: Host) -> SeedMaster:
    """Round 1: the seed master's layout, component flags and HA configs."""
    candidates = {layout: component_file(layout, "kube-apiserver") for layout in Layout}
    found = access.run_all(lambda conn: _read_files(conn, list(candidates.values())), [seed])[seed.name]
    if found.error is not None:
        raise found.error
    layouts = [layout for layout, path in candidates.items() if found.value[path] is not None]
    if not layouts:
        raise InputError(f"{seed.address} runs no kube-apiserver kubeha knows: neither "
                         f"{' nor '.join(map(str, candidates.values()))} exists; give a master")
    layout = layouts[0]
    paths = ClusterPaths.for_layout(layout)
    files = {c: component_file(layout, c) for c in COMPONENTS}
    others = {"kubelet": KUBELET_CONFIG, "keepalived": paths.keepalived_conf,
              "haproxy": paths.haproxy_cfg, "admin": paths.admin_kubeconfig}
    read = access.run_all(lambda conn: _read_files(conn, [*files.values(), *others.values()]), [seed])[seed.name]
    if read.error is not None:
        raise read.error
    content = {path: _text(data) for path, data in read.value.items()}
    flags = {c: parse_flags(component_command(layout, text, f"{seed.address}:{path}")[1:])
             for c, path in files.items() if (text := content[path]) is not None}
    keepalived, haproxy, kubelet, admin = (content[others[k]] for k in ("keepalived", "haproxy", "kubelet", "admin"))
    credentials = kubeconfig_credentials(admin, f"{seed.address}:{paths.admin_kubeconfig}") if admin else None
    return SeedMaster(
        layout=layout, flags=flags,
        cluster_domain=kubelet_cluster_domain(kubelet) if kubelet else None,
        vrrp=parse_keepalived_conf(keepalived) if keepalived else (),
        haproxy=parse_haproxy_cfg(haproxy) if haproxy else None,
        admin_server=credentials.server if credentials else None,
        admin_cluster_name=credentials.cluster_name if credentials else None,
    )


def _pair(flags: Flags, cert: str, key: str, default: CertPair) -> CertPair:
    return CertPair(cert=PurePosixPath(flags.get(cert, default.cert)), key=PurePosixPath(flags.get(key, default.key)))


def paths_from_flags(layout: Layout, flags: dict[str, Flags]) -> ClusterPaths:
    """The layout's paths, corrected by every file the components' flags name."""
    default = ClusterPaths.for_layout(layout)
    api, etcd = flags.get("kube-apiserver", {}), flags.get("etcd", {})
    cm, scheduler = flags.get("kube-controller-manager", {}), flags.get("kube-scheduler", {})
    update: dict[str, object] = {
        "ca": CertPair(cert=PurePosixPath(api.get("client-ca-file", default.ca.cert)),
                       key=PurePosixPath(cm.get("cluster-signing-key-file", default.ca.key))),
        "apiserver": _pair(api, "tls-cert-file", "tls-private-key-file", default.apiserver),
        "apiserver_etcd_client": _pair(api, "etcd-certfile", "etcd-keyfile", default.apiserver_etcd_client),
        "apiserver_kubelet_client": _pair(api, "kubelet-client-certificate", "kubelet-client-key",
                                          default.apiserver_kubelet_client),
        "etcd_ca": CertPair(cert=PurePosixPath(api.get("etcd-cafile", default.etcd_ca.cert)), key=default.etcd_ca.key),
        "etcd_server": _pair(etcd, "cert-file", "key-file", default.etcd_server),
        "etcd_peer": _pair(etcd, "peer-cert-file", "peer-key-file", default.etcd_peer),
        "service_account_pub": PurePosixPath(api.get("service-account-key-file", default.service_account_pub)),
        "service_account_key": PurePosixPath(api.get("service-account-signing-key-file",
                                                     default.service_account_key)),
        "etcd_data_dir": PurePosixPath(etcd.get("data-dir", default.etcd_data_dir)),
        "controller_manager_kubeconfig": PurePosixPath(cm.get("kubeconfig", default.controller_manager_kubeconfig)),
        "scheduler_kubeconfig": PurePosixPath(scheduler.get("kubeconfig", default.scheduler_kubeconfig)),
    }
    return default.model_copy(update=update)


def etcd_endpoints(apiserver: Flags, seed: IPv4Address) -> tuple[str, ...]:
    """The apiserver's --etcd-servers, a loopback one meaning the seed itself."""
    urls = []
    for url in filter(None, apiserver.get("etcd-servers", "").split(",")):
        host, port = url_address(url)
        urls.append(f"https://{seed if host in _LOOPBACK else host}:{port}")
    return tuple(urls)


@dataclass(frozen=True)
class ClusterState:
    """What etcd and the API say."""

    etcd_members: dict[IPv4Address, str]  # address -> member name
    nodes: tuple[NodeInfo, ...]
    version: str

    @property
    def nodes_by_address(self) -> dict[IPv4Address, NodeInfo]:
        return {n.internal_ip: n for n in self.nodes if n.internal_ip is not None}


def read_cluster_state(access: ClusterAccess, seed_host: Host, seed: SeedMaster) -> ClusterState:
    """Round 2: the etcd members and the Nodes, through the seed's own apiserver."""
    api_flags = seed.flags.get("kube-apiserver", {})
    endpoints = etcd_endpoints(api_flags, seed_host.address)
    if not endpoints:
        raise InputError(f"{seed_host.address}: the kube-apiserver has no --etcd-servers to find etcd by")
    members = {}
    for member in access.etcd_at(endpoints).member_list():
        urls = member.client_urls or member.peer_urls
        if urls and (member_address := _ipv4(url_address(urls[0])[0])) is not None:
            members[member_address] = member.name
    address = api_flags.get("advertise-address", str(seed_host.address))
    api = access.kube_at(f"https://{address}:{seed.apiserver_port}")
    return ClusterState(etcd_members=members, nodes=list_nodes(api), version=server_version(api))


@dataclass(frozen=True)
class HostFacts:
    hostname: str | None
    runs_apiserver: bool
    node_proxy: NodeProxyConfig | None


# One session per host (each costs a fork on the host): the hostname, whether the apiserver's
# manifest or unit ($1) exists, then the node-local proxy config ($2) if there is one.
_HOST_FACTS_SCRIPT = f"""{HOSTNAME.command}
if [ -e "$1" ]; then echo yes; else echo no; fi
cat -- "$2" 2>/dev/null || true
"""


async def _host_facts(conn: HostConnection, layout: Layout, proxy_conf: PurePosixPath) -> HostFacts:
    script = ["sh", "-c", _HOST_FACTS_SCRIPT, "sh", str(component_file(layout, "kube-apiserver")), str(proxy_conf)]
    hostname, runs_apiserver, proxy = (await conn.run(script)).stdout.split("\n", 2)
    return HostFacts(hostname=HOSTNAME.parse(hostname).split(".")[0].lower(),
                     runs_apiserver=runs_apiserver == "yes",
                     node_proxy=parse_node_proxy_conf(proxy) if proxy.strip() else None)


def _vip(seed: SeedMaster, masters: set[IPv4Address]) -> tuple[VirtualIP | None, tuple[VirtualIP, ...]]:
    """keepalived's VIPs (port: the admin kubeconfig's if it uses the VIP, else haproxy's),
    else the admin kubeconfig's server when it is no master."""
    server = url_address(seed.admin_server) if seed.admin_server else None
    instance = next((i for i in seed.vrrp if i.addresses), None)
    if instance is None:
        server_address = _ipv4(server[0]) if server else None
        if server is None or server_address is None or server_address.is_loopback or server_address in masters:
            return None, ()
        return VirtualIP(address=server_address, port=server[1]), ()
    addresses = [a for a, _ in instance.addresses]
    if server is not None and server[0] == str(addresses[0]):
        port = server[1]
    elif seed.haproxy is not None and seed.haproxy.ports:
        port = seed.haproxy.ports[0]
    else:
        port = VirtualIP.model_fields["port"].default
    settings = {"port": port, "interface": instance.addresses[0][1] or instance.interface or "eth0"}
    if instance.vrid is not None:
        settings["vrid"] = instance.vrid
    vips = [VirtualIP(address=a, **settings) for a in addresses]
    return vips[0], tuple(vips[1:])


def _load_balancer(seed: SeedMaster, node_proxy: NodeProxyConfig | None, apiserver_port: int) -> LoadBalancer:
    check = seed.haproxy.check if seed.haproxy else {}
    settings: dict[str, object] = {f"haproxy_check_{k}": v for k, v in check.items()}
    settings["keepalived_unicast"] = any(i.unicast for i in seed.vrrp)
    if node_proxy is not None and node_proxy.listen_port != apiserver_port:
        settings["node_local_proxy_port"] = node_proxy.listen_port
    return LoadBalancer(**settings)


def _ipv4(text: str) -> IPv4Address | None:
    """``text`` as an IPv4 address; None for a DNS name (kubeha's model holds addresses)."""
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def _first(flags: Flags, name: str) -> str | None:
    value = flags.get(name)
    return value.split(",")[0] if value else None


_NO_HOST = IPv4Network("0.0.0.0/8")  # "this network": 0.0.0.0, and what `0` or `1` resolve to


def _resolve(target: str) -> tuple[str, IPv4Address]:
    user, _, host = target.rpartition("@")
    if not host.strip() or not target.isprintable() or " " in target:
        raise InputError(f"{target!r} names no host: give the master as [USER@]ADDRESS, like root@10.0.0.11")
    try:
        address = IPv4Address(socket.gethostbyname(host))
    except (OSError, UnicodeError):
        raise InputError(f"cannot resolve {host!r} to an IPv4 address: give the master as USER@ADDRESS") from None
    if address in _NO_HOST or address.is_multicast or address == IPv4Address("255.255.255.255"):
        raise InputError(f"{host!r} is {address}, no host's address: give the master as USER@ADDRESS")
    return user or "root", address


def discover_inventory(target: str, *, port: int = 22, key_file: Path | None = None,
                       known_hosts: Path | None = None, trust_new_host_keys: bool = False,
                       prefer_tunnel: bool = False) -> Inventory:
    """The inventory of the cluster whose master ``target`` ([USER@]ADDRESS) is."""
    user, address = _resolve(target)
    ssh = SshDefaults(user=user, port=port, key_file=key_file, known_hosts=known_hosts)

    def access(hosts: Sequence[Host], **cluster: object) -> ClusterAccess:
        return ClusterAccess(Inventory(cluster=Cluster(hosts=tuple(hosts), **cluster), ssh=ssh),
                             trust_new_host_keys, prefer_tunnel=prefer_tunnel)

    seed_host = _host(address, ssh, [Role.MASTER])
    with access([seed_host]) as seed_access:
        seed = read_seed(seed_access, seed_host)
    paths = paths_from_flags(seed.layout, seed.flags)
    # the apiserver's own etcd client pair: the one pair certain to exist and be allowed
    probe_paths = paths.model_copy(update={"etcd_client": paths.apiserver_etcd_client})
    with access([seed_host], layout=seed.layout, paths_override=probe_paths,
                apiserver_port=seed.apiserver_port) as state_access:
        state = read_cluster_state(state_access, seed_host, seed)
    everyone = sorted(master_candidates(seed, state, address) | set(state.etcd_members) | set(state.nodes_by_address))
    with access([_host(a, ssh) for a in everyone], layout=seed.layout) as hosts_access:
        outcomes = hosts_access.run_all(lambda conn: _host_facts(conn, seed.layout, paths.node_proxy_conf))
    facts = {hosts_access.cluster.host(name).address: o.value for name, o in outcomes.items() if o.value}
    notes = [f"{e}: its name and roles are guessed from etcd and the Nodes" for o in outcomes.values()
             if (e := o.error) is not None]
    return Inventory(cluster=assemble_cluster(seed, state, facts, address, ssh), ssh=ssh, notes=tuple(notes))


def master_candidates(seed: SeedMaster, state: ClusterState, seed_address: IPv4Address) -> set[IPv4Address]:
    """The seed, the control-plane Nodes and haproxy's servers: hosts that may run an apiserver."""
    candidates = {seed_address} | {n.internal_ip for n in state.nodes if n.control_plane and n.internal_ip}
    if seed.haproxy is not None:
        candidates |= {a for b in seed.haproxy.servers if (a := _ipv4(b.address)) is not None}
    return candidates


def assemble_cluster(seed: SeedMaster, state: ClusterState, facts: dict[IPv4Address, HostFacts],
                     seed_address: IPv4Address, ssh: SshDefaults) -> Cluster:
    """The cluster the three rounds found; ``facts`` lacks the hosts SSH could not reach."""
    # a candidate SSH could not reach stays a master: nothing says it is not one
    masters = {a for a in master_candidates(seed, state, seed_address) if a not in facts or facts[a].runs_apiserver}
    nodes = state.nodes_by_address

    def roles_of(a: IPv4Address) -> set[Role]:
        return ({Role.MASTER} if a in masters else set()) | ({Role.ETCD} if a in state.etcd_members else set()) \
            | ({Role.WORKER} if a in nodes and a not in masters else set())

    order = {Role.MASTER: 0, Role.ETCD: 1, Role.WORKER: 2}
    hosts: list[Host] = []
    for a in sorted((a for a in masters | set(state.etcd_members) | set(nodes) if roles_of(a)),
                    key=lambda a: (min(map(order.get, roles_of(a))), a)):
        node = nodes.get(a)
        names = (facts[a].hostname if a in facts else None, state.etcd_members.get(a), node.name if node else None)
        taken = {h.name for h in hosts}
        name = next((n for n in names if n and re.match(HOST_NAME_PATTERN, n) and n not in taken), _placeholder(a))
        hosts.append(_host(a, ssh, roles_of(a), name, node_name=node.name if node and node.name != name else None))
    workers = [h.address for h in hosts if h.has(Role.WORKER) and h.address in facts]
    node_proxy = facts[workers[0]].node_proxy if workers else None
    vip, extra_vips = _vip(seed, masters)
    settings: dict[str, object] = {}
    cm = seed.flags.get("kube-controller-manager", {})
    name = next((n for n in (cm.get("cluster-name"), seed.admin_cluster_name)
                 if n and re.match(CLUSTER_NAME_PATTERN, n)), None)
    if name:
        settings["name"] = name
    if service_cidr := _first(seed.flags.get("kube-apiserver", {}), "service-cluster-ip-range"):
        settings["service_cidr"] = IPv4Network(service_cidr)
    if seed.cluster_domain:
        settings["cluster_domain"] = seed.cluster_domain
    paths = paths_from_flags(seed.layout, seed.flags)
    return Cluster(
        **settings,
        layout=seed.layout,
        etcd_topology=EtcdTopology.STACKED if set(state.etcd_members) <= masters else EtcdTopology.EXTERNAL,
        kubernetes_version=state.version,
        hosts=tuple(hosts),
        vip=vip,
        extra_vips=extra_vips,
        load_balancer=_load_balancer(seed, node_proxy, seed.apiserver_port),
        paths_override=None if paths == ClusterPaths.for_layout(seed.layout) else paths,
        apiserver_port=seed.apiserver_port,
        node_local_proxy=node_proxy is not None,
    )
