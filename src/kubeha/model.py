"""The cluster as kubeha sees it: hosts, roles, the HA endpoint, the layout.

Pure data: immutable pydantic models with no I/O. Every other layer reads these.
"""

from __future__ import annotations

from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Role(str, Enum):
    ETCD = "etcd"
    MASTER = "master"
    WORKER = "worker"
    LB = "lb"


class Layout(str, Enum):
    """How the control plane is installed on the masters."""

    KUBEADM = "kubeadm"  # static pods in /etc/kubernetes/manifests, certs in /etc/kubernetes/pki
    KUBEASZ = "kubeasz"  # systemd units, certs in /etc/kubernetes/ssl


class EtcdTopology(str, Enum):
    STACKED = "stacked"  # etcd runs on the masters
    EXTERNAL = "external"  # etcd runs on hosts of its own


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# A DNS label: what a host name may be (it names etcd members, haproxy servers, keepalived routers).
HOST_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Host(_Frozen):
    name: str = Field(pattern=HOST_NAME_PATTERN)
    address: IPv4Address
    roles: frozenset[Role] = frozenset()
    ssh_user: str = "root"
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_key: Path | None = None  # private key on the operator's machine; None: ssh's own choice
    node_name: str | None = None  # the Kubernetes Node name when it is not `name` (kubeasz: the IP)

    def has(self, role: Role) -> bool:
        return role in self.roles

    @property
    def kube_node_name(self) -> str:
        return self.node_name or self.name


DEFAULT_VRID = 51  # keepalived's VRRP router id of a VIP the inventory gives none for


class VirtualIP(_Frozen):
    """The VIP held by keepalived and the port haproxy serves the apiservers on."""

    address: IPv4Address
    port: int = Field(default=8443, ge=1, le=65535)
    interface: str = "eth0"
    vrid: int = Field(default=DEFAULT_VRID, ge=1, le=255)


class LoadBalancer(_Frozen):
    """How the LB hosts run keepalived and haproxy, and where the node-local proxy listens."""

    keepalived_unicast: bool = False  # VRRP adverts to the peers instead of multicast
    haproxy_check_interval_ms: int = Field(default=400, ge=10, le=60_000)
    haproxy_check_fall: int = Field(default=3, ge=1, le=100)
    haproxy_check_rise: int = Field(default=2, ge=1, le=100)
    node_local_proxy_port: int | None = Field(default=None, ge=1, le=65535)  # None: the apiserver port


class CertPair(_Frozen):
    cert: PurePosixPath
    key: PurePosixPath


class ClusterPaths(_Frozen):
    """Where a layout keeps its files on a host."""

    ca: CertPair
    apiserver: CertPair
    apiserver_etcd_client: CertPair
    apiserver_kubelet_client: CertPair
    etcd_ca: CertPair
    etcd_server: CertPair
    etcd_peer: CertPair
    etcd_client: CertPair  # what etcdctl and health checks on a master use
    service_account_key: PurePosixPath
    service_account_pub: PurePosixPath
    pki_dir: PurePosixPath
    etcd_pki_dir: PurePosixPath
    manifests_dir: PurePosixPath | None  # static pods (kubeadm) or None (units)
    units_dir: PurePosixPath = PurePosixPath("/etc/systemd/system")
    admin_kubeconfig: PurePosixPath
    kubelet_kubeconfig: PurePosixPath
    kube_proxy_kubeconfig: PurePosixPath
    controller_manager_kubeconfig: PurePosixPath
    scheduler_kubeconfig: PurePosixPath
    etcd_data_dir: PurePosixPath = PurePosixPath("/var/lib/etcd")
    haproxy_cfg: PurePosixPath = PurePosixPath("/etc/haproxy/haproxy.cfg")
    keepalived_conf: PurePosixPath = PurePosixPath("/etc/keepalived/keepalived.conf")
    node_proxy_conf: PurePosixPath = PurePosixPath("/etc/nginx/nginx.conf")

    @classmethod
    def for_layout(cls, layout: Layout) -> ClusterPaths:
        k = PurePosixPath("/etc/kubernetes")
        if layout is Layout.KUBEADM:
            pki = k / "pki"

            def pair(stem: str) -> CertPair:
                return CertPair(cert=pki / f"{stem}.crt", key=pki / f"{stem}.key")

            return cls(
                ca=pair("ca"),
                apiserver=pair("apiserver"),
                apiserver_etcd_client=pair("apiserver-etcd-client"),
                apiserver_kubelet_client=pair("apiserver-kubelet-client"),
                etcd_ca=pair("etcd/ca"),
                etcd_server=pair("etcd/server"),
                etcd_peer=pair("etcd/peer"),
                etcd_client=pair("etcd/healthcheck-client"),
                service_account_key=pki / "sa.key",
                service_account_pub=pki / "sa.pub",
                pki_dir=k / "pki",
                etcd_pki_dir=k / "pki/etcd",
                manifests_dir=k / "manifests",
                admin_kubeconfig=k / "admin.conf",
                kubelet_kubeconfig=k / "kubelet.conf",
                kube_proxy_kubeconfig=PurePosixPath("/var/lib/kube-proxy/kubeconfig.conf"),
                controller_manager_kubeconfig=k / "controller-manager.conf",
                scheduler_kubeconfig=k / "scheduler.conf",
            )
        ssl = k / "ssl"

        def pem(stem: str) -> CertPair:
            return CertPair(cert=ssl / f"{stem}.pem", key=ssl / f"{stem}-key.pem")

        # kubeasz signs etcd with the cluster CA and uses one etcd cert for server and peer
        return cls(
            ca=pem("ca"),
            apiserver=pem("kubernetes"),
            apiserver_etcd_client=pem("kubernetes"),
            apiserver_kubelet_client=pem("kubernetes"),
            etcd_ca=pem("ca"),
            etcd_server=pem("etcd"),
            etcd_peer=pem("etcd"),
            etcd_client=pem("etcd"),
            service_account_key=ssl / "ca-key.pem",
            service_account_pub=ssl / "ca.pem",
            pki_dir=ssl,
            etcd_pki_dir=k / "ssl",
            manifests_dir=None,
            admin_kubeconfig=PurePosixPath("/root/.kube/config"),
            kubelet_kubeconfig=k / "kubelet.kubeconfig",
            kube_proxy_kubeconfig=k / "kube-proxy.kubeconfig",
            controller_manager_kubeconfig=k / "kube-controller-manager.kubeconfig",
            scheduler_kubeconfig=k / "kube-scheduler.kubeconfig",
        )


class Cluster(_Frozen):
    name: str = "kubernetes"
    layout: Layout = Layout.KUBEADM
    etcd_topology: EtcdTopology = EtcdTopology.STACKED
    hosts: tuple[Host, ...]
    vip: VirtualIP | None = None
    # more VIPs served beside `vip` (e.g. the old one while the endpoint changes); not the endpoint
    extra_vips: tuple[VirtualIP, ...] = ()
    network: IPv4Network | None = None  # the subnet of the host addresses and VIPs, when known
    load_balancer: LoadBalancer = LoadBalancer()
    paths_override: ClusterPaths | None = None  # None: ClusterPaths.for_layout(layout)
    apiserver_port: int = Field(default=6443, ge=1, le=65535)
    node_local_proxy: bool = True  # nginx on each worker: 127.0.0.1:<apiserver_port> -> all apiservers
    service_cidr: IPv4Network = IPv4Network("10.96.0.0/12")
    cluster_domain: str = "cluster.local"
    kubernetes_version: str = "v1.30.0"

    @model_validator(mode="after")
    def _unique_hosts(self) -> Cluster:
        for attr in ("name", "address"):
            seen: set[object] = set()
            for h in self.hosts:
                value = getattr(h, attr)
                if value in seen:
                    raise ValueError(f"two hosts share the {attr} {value}")
                seen.add(value)
        return self

    @property
    def paths(self) -> ClusterPaths:
        return self.paths_override or ClusterPaths.for_layout(self.layout)

    @property
    def vips(self) -> tuple[VirtualIP, ...]:
        """Every VIP the LB hosts serve: `vip` first."""
        return ((self.vip,) if self.vip is not None else ()) + self.extra_vips

    def with_role(self, role: Role) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.has(role))

    @property
    def masters(self) -> tuple[Host, ...]:
        return self.with_role(Role.MASTER)

    @property
    def etcd_members(self) -> tuple[Host, ...]:
        return self.with_role(Role.ETCD)

    @property
    def workers(self) -> tuple[Host, ...]:
        return self.with_role(Role.WORKER)

    @property
    def lb_hosts(self) -> tuple[Host, ...]:
        """Hosts that run keepalived + haproxy: dedicated LB hosts, else the masters."""
        return self.with_role(Role.LB) or self.masters

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def service_ip(self) -> IPv4Address:
        """The first address of the service range: the in-cluster `kubernetes` Service."""
        return self.service_cidr.network_address + 1

    @property
    def endpoint(self) -> str:
        """The HA API endpoint clients should use: the VIP if there is one, else the first master."""
        if self.vip is not None:
            return f"https://{self.vip.address}:{self.vip.port}"
        return f"https://{self.masters[0].address}:{self.apiserver_port}"

    @property
    def node_local_port(self) -> int:
        return self.load_balancer.node_local_proxy_port or self.apiserver_port

    @property
    def node_local_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.node_local_port}"

    def etcd_client_urls(self) -> tuple[str, ...]:
        return tuple(f"https://{h.address}:2379" for h in self.etcd_members)

    def etcd_peer_url(self, host: Host) -> str:
        return f"https://{host.address}:2380"

    def etcd_initial_cluster(self) -> str:
        return ",".join(f"{h.name}={self.etcd_peer_url(h)}" for h in self.etcd_members)
