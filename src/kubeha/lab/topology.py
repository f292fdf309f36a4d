"""The lab's cluster: which hosts, which addresses, which files and services each gets."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import PurePosixPath

from kubeha.errors import InputError
from kubeha.lb import keepalived_priority, node_proxy_hosts
from kubeha.model import Cluster, Host, Layout, Role, VirtualIP
from kubeha.pki.cluster import (
    ADMIN, CONTROLLER_MANAGER, KUBE_PROXY, SCHEDULER, ClusterAuthorities, PkiFiles,
    apiserver_files, ca_files, client_cert, etcd_member_files, kubelet_identity,
)
from kubeha.render import (
    HAPROXY_SERVER_STATE,
    render_control_plane, render_haproxy_cfg, render_keepalived_conf, render_kubeconfig,
    render_kubelet, render_node_proxy_conf,
)

# Host addresses are <subnet> + offset: masters .11.., spares .21.., workers .31.., VIP .100.
MASTER_OFFSET, SPARE_OFFSET, WORKER_OFFSET, VIP_OFFSET = 10, 20, 30, 100
MAX_PER_KIND = 9
KEEPALIVED_DROPIN = PurePosixPath("/etc/systemd/system/keepalived.service.d/10-kubeha-lab.conf")
KEEPALIVED_DROPIN_TEXT = """\
# kubeha lab: keepalived sends READY=1 only when its parent is systemd (PID 1); under the
# lab's systemctl stand-in it never would, so the service counts as started once forked.
[Service]
Type=simple
"""


@dataclass(frozen=True)
class LabSpec:
    masters: int = 3
    spares: int = 3
    workers: int = 3
    layout: Layout = Layout.KUBEADM
    with_lb: bool = True  # False: no VIP, haproxy, keepalived or node-local proxy (for `kubeha lb apply`)
    subnet: IPv4Network | None = None  # None: the lab's own (10.212.<lab id>.0/24)

    def validate(self) -> None:
        for kind, count, low in (("masters", self.masters, 1), ("spares", self.spares, 0),
                                 ("workers", self.workers, 0)):
            if not low <= count <= MAX_PER_KIND:
                raise InputError(f"--{kind} must be between {low} and {MAX_PER_KIND}, not {count}")
        if self.subnet is None:
            raise InputError("the lab needs a subnet")
        if self.subnet.prefixlen > 24:
            raise InputError(f"--subnet {self.subnet} is too small: use a /24 or larger")
        if not self.subnet.is_private:
            raise InputError(f"--subnet {self.subnet} is not a private range: use e.g. 10.212.0.0/24")


@dataclass(frozen=True)
class LabTopology:
    """The cluster the lab runs, and the spare hosts that only run sshd."""

    cluster: Cluster
    spares: tuple[Host, ...]
    subnet: IPv4Network

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.cluster.hosts + self.spares


def lab_topology(spec: LabSpec) -> LabTopology:
    spec.validate()
    assert spec.subnet is not None
    base = spec.subnet.network_address

    def hosts(kind: str, count: int, offset: int, roles: frozenset[Role]) -> tuple[Host, ...]:
        return tuple(Host(name=f"{kind}{i}", address=base + offset + i, roles=roles)
                     for i in range(1, count + 1))

    masters = hosts("master", spec.masters, MASTER_OFFSET,
                    frozenset({Role.MASTER, Role.ETCD}))
    workers = hosts("worker", spec.workers, WORKER_OFFSET, frozenset({Role.WORKER}))
    cluster = Cluster(
        name="kubeha-lab",
        layout=spec.layout,
        hosts=masters + workers,
        vip=VirtualIP(address=base + VIP_OFFSET) if spec.with_lb else None,
        node_local_proxy=spec.with_lb,
    )
    return LabTopology(cluster=cluster, spares=hosts("spare", spec.spares, SPARE_OFFSET, frozenset()),
                       subnet=spec.subnet)


def light_topology(count: int, subnet: IPv4Network, prefix: str = "host") -> LabTopology:
    """``count`` hosts that run only sshd, at the subnet's addresses from .2 on (the operator
    holds .1), and no cluster: `Lab.up_light`."""
    room = subnet.num_addresses - 3  # the network, the operator's and the broadcast address
    if not 1 <= count <= room:
        raise InputError(f"{count} light hosts do not fit in {subnet}: 1 to {room}")
    base = subnet.network_address + 1
    hosts = tuple(Host(name=f"{prefix}{i}", address=base + i) for i in range(1, count + 1))
    return LabTopology(cluster=Cluster(name="kubeha-lab", hosts=()), spares=hosts, subnet=subnet)


def _local_apiserver(cluster: Cluster, host: Host) -> str:
    return f"https://{host.address}:{cluster.apiserver_port}"


def node_client_endpoint(cluster: Cluster, host: Host) -> str:
    """Where the kubelet and kube-proxy of ``host`` reach the API."""
    if host in node_proxy_hosts(cluster):
        return cluster.node_local_endpoint
    return cluster.endpoint


def component_endpoint(cluster: Cluster, host: Host) -> str:
    """Where controller-manager and scheduler on a master reach the API."""
    if cluster.layout is Layout.KUBEADM:
        return _local_apiserver(cluster, host)
    return cluster.node_local_endpoint


def kubeconfig_file(cluster: Cluster, auth: ClusterAuthorities, identity: tuple[str, tuple[str, ...]],
                    server: str) -> tuple[bytes, int]:
    kc = client_cert(auth, identity)
    text = render_kubeconfig(cluster_name=cluster.name, server=server, ca_pem=auth.ca.cert_pem,
                             client_cert_pem=kc.cert_pem, client_key_pem=kc.key_pem,
                             user=identity[0])
    return text.encode(), 0o600


def host_files(cluster: Cluster, host: Host, auth: ClusterAuthorities) -> PkiFiles:
    """Every file the lab installs on ``host``: certs, kubeconfigs, units or manifests, LB
    configs. A spare gets only what makes it a machine of the lab."""
    paths = cluster.paths
    is_master = host.has(Role.MASTER)
    # on every host, as a package would install keepalived's unit: `kubeha lb apply` or a
    # new master may start keepalived on any of them
    files: PkiFiles = {KEEPALIVED_DROPIN: (KEEPALIVED_DROPIN_TEXT.encode(), 0o644)}
    if host not in cluster.hosts:
        return files
    files.update(ca_files(cluster, auth, with_keys=is_master))
    if host.has(Role.ETCD):
        files.update(etcd_member_files(cluster, host, auth))
    if is_master:
        files.update(apiserver_files(cluster, host, auth))
        files[CALICOCTL_CFG] = (calicoctl_cfg(cluster).encode(), 0o644)
        files[paths.admin_kubeconfig] = kubeconfig_file(cluster, auth, ADMIN, cluster.endpoint)
        local = component_endpoint(cluster, host)
        files[paths.controller_manager_kubeconfig] = kubeconfig_file(cluster, auth, CONTROLLER_MANAGER, local)
        files[paths.scheduler_kubeconfig] = kubeconfig_file(cluster, auth, SCHEDULER, local)
        for rendered in render_control_plane(cluster, host):
            files[rendered.path] = (rendered.content.encode(), rendered.mode)
    if host in cluster.lb_hosts and cluster.vip is not None:
        files[paths.haproxy_cfg] = (render_haproxy_cfg(cluster).encode(), 0o644)
        files[HAPROXY_SERVER_STATE] = (b"1\n", 0o644)  # no servers yet, as `kubeha lb apply` starts it
        conf = render_keepalived_conf(cluster, host, keepalived_priority(cluster, host))
        files[paths.keepalived_conf] = (conf.encode(), 0o644)
    if host in node_proxy_hosts(cluster):
        files[paths.node_proxy_conf] = (render_node_proxy_conf(cluster).encode(), 0o644)
    if host.has(Role.WORKER) or is_master:
        server = node_client_endpoint(cluster, host)
        files[paths.kubelet_kubeconfig] = kubeconfig_file(cluster, auth, kubelet_identity(host), server)
        files[paths.kube_proxy_kubeconfig] = kubeconfig_file(cluster, auth, KUBE_PROXY, server)
        for rendered in render_kubelet(cluster, host):
            files[rendered.path] = (rendered.content.encode(), rendered.mode)
    return files


CALICOCTL_CFG = PurePosixPath("/etc/calico/calicoctl.cfg")


def calicoctl_cfg(cluster: Cluster) -> str:
    """calicoctl's config on a master, for calico on the etcd datastore."""
    p = cluster.paths
    return ("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata:\nspec:\n"
            '  datastoreType: "etcdv3"\n'
            f'  etcdEndpoints: "{",".join(cluster.etcd_client_urls())}"\n'
            f'  etcdKeyFile: "{p.etcd_client.key}"\n  etcdCertFile: "{p.etcd_client.cert}"\n'
            f'  etcdCACertFile: "{p.etcd_ca.cert}"\n')


def host_services(cluster: Cluster, host: Host) -> tuple[str, ...]:
    """The units the lab starts on ``host``, in start order (keepalived is started separately)."""
    units: list[str] = []
    if host.has(Role.MASTER) and cluster.layout is Layout.KUBEASZ:
        units += ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    if host in node_proxy_hosts(cluster):
        units.append("nginx")
    if host in cluster.lb_hosts and cluster.vip is not None:
        units.append("haproxy")
    if host.has(Role.WORKER) or host.has(Role.MASTER):
        units.append("kubelet")
    return tuple(units)


def static_pods(cluster: Cluster, host: Host) -> tuple[str, ...]:
    if cluster.layout is Layout.KUBEADM and host.has(Role.MASTER):
        return ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    return ()


def etc_hosts(topology: LabTopology) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address}\t{h.name}" for h in topology.hosts]
    return "\n".join(lines) + "\n"
