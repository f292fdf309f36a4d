"""The control plane and the kubelet of a host, in the form its layout installs them.

kubeadm: static pod manifests in ``paths.manifests_dir`` run by the kubelet, and
``kubelet.service`` with kubeadm's drop-in. kubeasz: systemd units in ``paths.units_dir``.
One function per component builds its flags; both forms are rendered from those flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from kubeha.errors import InputError
from kubeha.model import Cluster, EtcdTopology, Host, Layout, Role
from kubeha.render._text import dump_yaml, render_template

Flags = dict[str, str]

ETCD_BINARY = PurePosixPath("/usr/bin/etcd")
KUBE_BIN_DIR = PurePosixPath("/usr/local/bin")
ETCD_IMAGE = "registry.k8s.io/etcd:3.5.12-0"  # what kubeadm v1.30 runs
ETCD_CLIENT_PORT = 2379
ETCD_METRICS_PORT = 2381  # plain HTTP /health on 127.0.0.1 for the liveness probe
KUBELET_DIR = PurePosixPath("/var/lib/kubelet")
KUBELET_CONFIG = KUBELET_DIR / "config.yaml"
CONTAINER_RUNTIME_ENDPOINT = "unix:///var/run/containerd/containerd.sock"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"
_K8S_DOCS = "https://kubernetes.io/docs/"


@dataclass(frozen=True)
class RenderedFile:
    """A file to put on a host: where, what, and its permission bits."""

    path: PurePosixPath
    content: str
    mode: int = 0o644


def _flag_list(flags: Mapping[str, str]) -> list[str]:
    """``--name=value`` in name order, as kubeadm writes them."""
    return [f"--{name}={flags[name]}" for name in sorted(flags)]


# ---- flags -------------------------------------------------------------------------


def etcd_flags(
    cluster: Cluster, host: Host, *, initial_cluster_state: str = "new", initial_cluster: str | None = None
) -> Flags:
    """etcd's flags for member ``host``: TLS with client-cert auth for clients and peers.

    ``initial_cluster`` (``name=peer-url,...``) defaults to every etcd member of the cluster;
    a member joining a running cluster needs ``initial_cluster_state="existing"`` and the
    member list etcd gave back when it was added.
    """
    if initial_cluster_state not in ("new", "existing"):
        raise InputError(f"etcd initial cluster state {initial_cluster_state!r} is neither new nor existing")
    p = cluster.paths
    client_url = f"https://{host.address}:{ETCD_CLIENT_PORT}"
    peer_url = cluster.etcd_peer_url(host)
    return {
        "name": host.name,
        "data-dir": str(p.etcd_data_dir),
        "listen-client-urls": f"https://127.0.0.1:{ETCD_CLIENT_PORT},{client_url}",
        "advertise-client-urls": client_url,
        "listen-peer-urls": peer_url,
        "initial-advertise-peer-urls": peer_url,
        "initial-cluster": cluster.etcd_initial_cluster() if initial_cluster is None else initial_cluster,
        "initial-cluster-state": initial_cluster_state,
        "listen-metrics-urls": f"http://127.0.0.1:{ETCD_METRICS_PORT}",
        "cert-file": str(p.etcd_server.cert),
        "key-file": str(p.etcd_server.key),
        "trusted-ca-file": str(p.etcd_ca.cert),
        "client-cert-auth": "true",
        "peer-cert-file": str(p.etcd_peer.cert),
        "peer-key-file": str(p.etcd_peer.key),
        "peer-trusted-ca-file": str(p.etcd_ca.cert),
        "peer-client-cert-auth": "true",
        "snapshot-count": "10000",
        "experimental-initial-corrupt-check": "true",
        "experimental-watch-progress-notify-interval": "5s",
    }


def default_etcd_servers(cluster: Cluster, host: Host) -> tuple[str, ...]:
    """The etcd endpoints of ``host``'s apiserver as the layout sets them up.

    kubeadm with stacked etcd points each apiserver at its local member only; otherwise
    (kubeasz, external etcd) every apiserver lists every member.
    """
    if cluster.layout is Layout.KUBEADM and cluster.etcd_topology is EtcdTopology.STACKED and host.has(Role.ETCD):
        return (f"https://127.0.0.1:{ETCD_CLIENT_PORT}",)
    return cluster.etcd_client_urls()


def apiserver_flags(cluster: Cluster, host: Host, *, etcd_servers: Sequence[str] | None = None) -> Flags:
    """kube-apiserver's flags on master ``host``; ``etcd_servers`` defaults to
    ``default_etcd_servers``. kubeasz binds the host's address, kubeadm all addresses."""
    p = cluster.paths
    flags = {
        "advertise-address": str(host.address),
        "allow-privileged": "true",
        "authorization-mode": "Node,RBAC",
        "client-ca-file": str(p.ca.cert),
        "enable-admission-plugins": "NodeRestriction",
        "enable-bootstrap-token-auth": "true",
        "etcd-cafile": str(p.etcd_ca.cert),
        "etcd-certfile": str(p.apiserver_etcd_client.cert),
        "etcd-keyfile": str(p.apiserver_etcd_client.key),
        "etcd-servers": ",".join(default_etcd_servers(cluster, host) if etcd_servers is None else etcd_servers),
        "kubelet-client-certificate": str(p.apiserver_kubelet_client.cert),
        "kubelet-client-key": str(p.apiserver_kubelet_client.key),
        "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
        "secure-port": str(cluster.apiserver_port),
        "service-account-issuer": f"https://kubernetes.default.svc.{cluster.cluster_domain}",
        "service-account-key-file": str(p.service_account_pub),
        "service-account-signing-key-file": str(p.service_account_key),
        "service-cluster-ip-range": str(cluster.service_cidr),
        "tls-cert-file": str(p.apiserver.cert),
        "tls-private-key-file": str(p.apiserver.key),
    }
    if cluster.layout is Layout.KUBEASZ:
        flags["bind-address"] = str(host.address)
    return flags


def _kubeconfig_auth_flags(kubeconfig: PurePosixPath) -> Flags:
    """What kubeadm gives the controller-manager and the scheduler to reach the apiserver."""
    return {
        "authentication-kubeconfig": str(kubeconfig),
        "authorization-kubeconfig": str(kubeconfig),
        "bind-address": "127.0.0.1",
        "kubeconfig": str(kubeconfig),
        "leader-elect": "true",
    }


def controller_manager_flags(cluster: Cluster) -> Flags:
    p = cluster.paths
    return _kubeconfig_auth_flags(p.controller_manager_kubeconfig) | {
        "client-ca-file": str(p.ca.cert),
        "cluster-name": cluster.name,
        "cluster-signing-cert-file": str(p.ca.cert),
        "cluster-signing-key-file": str(p.ca.key),
        "controllers": "*,bootstrapsigner,tokencleaner",
        "root-ca-file": str(p.ca.cert),
        "service-account-private-key-file": str(p.service_account_key),
        "service-cluster-ip-range": str(cluster.service_cidr),
        "use-service-account-credentials": "true",
    }


def scheduler_flags(cluster: Cluster) -> Flags:
    return _kubeconfig_auth_flags(cluster.paths.scheduler_kubeconfig)


def _runs_static_pods(cluster: Cluster, host: Host) -> bool:
    return cluster.paths.manifests_dir is not None and (host.has(Role.MASTER) or host.has(Role.ETCD))


def kubelet_node_flags(cluster: Cluster, host: Host) -> Flags:
    """The kubelet flags that are the node's own (kubeadm keeps them in kubeadm-flags.env).

    Masters register with the control-plane label and NoSchedule taint.
    """
    flags = {
        "container-runtime-endpoint": CONTAINER_RUNTIME_ENDPOINT,
        "hostname-override": host.name,
        "node-ip": str(host.address),
    }
    if host.has(Role.MASTER):
        flags["node-labels"] = f"{CONTROL_PLANE_ROLE}="
        flags["register-with-taints"] = f"{CONTROL_PLANE_ROLE}:NoSchedule"
    return flags


# ---- the two forms -----------------------------------------------------------------


@dataclass(frozen=True)
class _Volume:
    name: str
    path: PurePosixPath
    type: str  # hostPath type
    read_only: bool = True


@dataclass(frozen=True)
class _Component:
    """One control-plane program and what either form needs besides its flags."""

    name: str  # container, manifest and unit name
    binary: PurePosixPath
    image: str
    description: str
    service: tuple[tuple[str, str], ...]  # [Service] lines of the unit, besides ExecStart
    documentation: str = _K8S_DOCS
    probes: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    volumes: tuple[_Volume, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)


_RESTART = (("Restart", "always"), ("RestartSec", "5"))
_NOFILE = (("LimitNOFILE", "65536"),)


def _probe(host: str, port: int, path: str, scheme: str, failures: int, period: int = 10, delay: int = 10) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "failureThreshold": failures,
        "httpGet": {"host": host, "path": path, "port": port, "scheme": scheme},
    }
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe | {"periodSeconds": period, "timeoutSeconds": 15}


def _health_probes(host: str, port: int, live: str, *, scheme: str = "HTTPS", start: str | None = None,
                   ready: str | None = None) -> dict[str, Any]:
    """kubeadm's probes: liveness, optionally readiness, and a patient startup probe."""
    probes = {"livenessProbe": _probe(host, port, live, scheme, 8)}
    if ready is not None:
        probes["readinessProbe"] = _probe(host, port, ready, scheme, 3, period=1, delay=0)
    probes["startupProbe"] = _probe(host, port, start or live, scheme, 24)
    return probes


def _pki_volumes(cluster: Cluster) -> tuple[_Volume, ...]:
    return (
        _Volume("ca-certs", PurePosixPath("/etc/ssl/certs"), "DirectoryOrCreate"),
        _Volume("k8s-certs", cluster.paths.pki_dir, "DirectoryOrCreate"),
    )


def _kubeconfig_volume(path: PurePosixPath) -> _Volume:
    return _Volume("kubeconfig", path, "FileOrCreate")


def _static_pod(c: _Component, flags: Flags) -> dict[str, Any]:
    container = {
        "command": [c.binary.name, *_flag_list(flags)],  # the kubelet finds the program on PATH
        "image": c.image,
        "imagePullPolicy": "IfNotPresent",
        **c.probes,
        "name": c.name,
        "resources": {"requests": c.requests},
        "volumeMounts": [{"mountPath": str(v.path), "name": v.name, "readOnly": v.read_only} for v in c.volumes],
    }
    metadata = {"annotations": c.annotations} if c.annotations else {}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata | {
            "labels": {"component": c.name, "tier": "control-plane"},
            "name": c.name,
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [container],
            "hostNetwork": True,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"hostPath": {"path": str(v.path), "type": v.type}, "name": v.name} for v in c.volumes],
        },
    }
    return pod


def _unit(cluster: Cluster, name: str, description: str, binary: PurePosixPath, flags: list[str],
          service: Sequence[tuple[str, str]], documentation: str = _K8S_DOCS) -> RenderedFile:
    content = render_template("unit.service.j2", description=description, documentation=documentation,
                              binary=binary, flags=flags, service=service)
    return RenderedFile(cluster.paths.units_dir / f"{name}.service", content)


def _component_file(cluster: Cluster, c: _Component, flags: Flags) -> RenderedFile:
    """The static pod manifest where the layout has a manifests dir, else the unit."""
    manifests = cluster.paths.manifests_dir
    if manifests is not None:
        return RenderedFile(manifests / f"{c.name}.yaml", dump_yaml(_static_pod(c, flags)), 0o600)
    return _unit(cluster, c.name, c.description, c.binary, _flag_list(flags), c.service, c.documentation)


# ---- components ----------------------------------------------------------------------


def render_etcd(
    cluster: Cluster, host: Host, *, initial_cluster_state: str = "new", initial_cluster: str | None = None,
    as_unit: bool = False,
) -> RenderedFile:
    """etcd member ``host``: ``etcd.yaml`` static pod (kubeadm) or ``etcd.service`` (kubeasz,
    Type=notify, restarted after 15 s). Flags from ``etcd_flags``.

    ``as_unit`` renders ``etcd.service`` whatever the layout: for a host whose kubelet runs
    no static pods (a kubeadm host that is no master), with the layout's own paths."""
    p = cluster.paths
    c = _Component(
        name="etcd",
        binary=ETCD_BINARY,
        image=ETCD_IMAGE,
        description="etcd key-value store",
        documentation="https://etcd.io/docs/",
        service=(("Type", "notify"), ("Restart", "always"), ("RestartSec", "15"), *_NOFILE,
                 ("OOMScoreAdjust", "-999")),
        probes=_health_probes("127.0.0.1", ETCD_METRICS_PORT, "/health?exclude=NOSPACE&serializable=true",
                              scheme="HTTP", start="/health?serializable=false"),
        requests={"cpu": "100m", "memory": "100Mi"},
        volumes=(_Volume("etcd-certs", p.etcd_pki_dir, "DirectoryOrCreate", read_only=False),
                 _Volume("etcd-data", p.etcd_data_dir, "DirectoryOrCreate", read_only=False)),
        annotations={"kubeadm.kubernetes.io/etcd.advertise-client-urls": f"https://{host.address}:{ETCD_CLIENT_PORT}"},
    )
    flags = etcd_flags(cluster, host, initial_cluster_state=initial_cluster_state, initial_cluster=initial_cluster)
    if as_unit:
        return _unit(cluster, c.name, c.description, c.binary, _flag_list(flags), c.service, c.documentation)
    return _component_file(cluster, c, flags)


def _kube_component(cluster: Cluster, name: str, description: str, **parts: Any) -> _Component:
    """A Kubernetes program: ``KUBE_BIN_DIR/<name>`` as a unit, the cluster's version as a pod."""
    return _Component(name=name, binary=KUBE_BIN_DIR / name, description=description,
                      image=f"registry.k8s.io/{name}:{cluster.kubernetes_version}", **parts)


def render_apiserver(cluster: Cluster, host: Host, *, etcd_servers: Sequence[str] | None = None) -> RenderedFile:
    """kube-apiserver on master ``host``: ``kube-apiserver.yaml`` (kubeadm, probed on
    /livez and /readyz at its advertise address) or ``kube-apiserver.service`` (kubeasz).
    Flags from ``apiserver_flags``."""
    address = str(host.address)
    c = _kube_component(
        cluster, "kube-apiserver", "Kubernetes API Server",
        service=(*_RESTART, *_NOFILE),
        probes=_health_probes(address, cluster.apiserver_port, "/livez", ready="/readyz"),
        requests={"cpu": "250m"},
        volumes=_pki_volumes(cluster),
        annotations={
            "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": f"{address}:{cluster.apiserver_port}"
        },
    )
    return _component_file(cluster, c, apiserver_flags(cluster, host, etcd_servers=etcd_servers))


def _leader_elected(cluster: Cluster, name: str, description: str, health_port: int, cpu: str,
                    volumes: tuple[_Volume, ...]) -> _Component:
    """kube-controller-manager or kube-scheduler: serves /healthz on 127.0.0.1:``health_port``."""
    return _kube_component(cluster, name, description, service=_RESTART,
                           probes=_health_probes("127.0.0.1", health_port, "/healthz"),
                           requests={"cpu": cpu}, volumes=volumes)


def render_controller_manager(cluster: Cluster) -> RenderedFile:
    """kube-controller-manager of a master: ``kube-controller-manager.yaml`` (kubeadm) or
    ``.service`` (kubeasz). Flags from ``controller_manager_flags``."""
    volumes = (*_pki_volumes(cluster), _kubeconfig_volume(cluster.paths.controller_manager_kubeconfig))
    c = _leader_elected(cluster, "kube-controller-manager", "Kubernetes Controller Manager", 10257, "200m", volumes)
    return _component_file(cluster, c, controller_manager_flags(cluster))


def render_scheduler(cluster: Cluster) -> RenderedFile:
    """kube-scheduler of a master: ``kube-scheduler.yaml`` (kubeadm) or ``.service``
    (kubeasz). Flags from ``scheduler_flags``."""
    volumes = (_kubeconfig_volume(cluster.paths.scheduler_kubeconfig),)
    c = _leader_elected(cluster, "kube-scheduler", "Kubernetes Scheduler", 10259, "100m", volumes)
    return _component_file(cluster, c, scheduler_flags(cluster))


def render_control_plane(
    cluster: Cluster,
    host: Host,
    *,
    etcd_servers: Sequence[str] | None = None,
    initial_cluster_state: str = "new",
    initial_cluster: str | None = None,
) -> list[RenderedFile]:
    """Everything of the control plane ``host`` runs: its etcd member if it has the etcd
    role, and kube-apiserver, kube-controller-manager and kube-scheduler if it is a master."""
    files = []
    if host.has(Role.ETCD):
        files.append(render_etcd(cluster, host, initial_cluster_state=initial_cluster_state,
                                 initial_cluster=initial_cluster))
    if host.has(Role.MASTER):
        files += [render_apiserver(cluster, host, etcd_servers=etcd_servers),
                  render_controller_manager(cluster), render_scheduler(cluster)]
    return files


def render_kubelet_config(cluster: Cluster, host: Host) -> RenderedFile:
    """``/var/lib/kubelet/config.yaml``: webhook authn/authz with the cluster CA for x509,
    cluster DNS at the service range's 10th address, and on static-pod hosts
    (kubeadm masters and etcd members) ``staticPodPath``."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"cacheTTL": "0s", "enabled": True},
            "x509": {"clientCAFile": str(cluster.paths.ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "systemd",
        "clusterDNS": [str(cluster.service_cidr.network_address + 10)],
        "clusterDomain": cluster.cluster_domain,
        "rotateCertificates": True,
    }
    if _runs_static_pods(cluster, host):
        config["staticPodPath"] = str(cluster.paths.manifests_dir)
    return RenderedFile(KUBELET_CONFIG, dump_yaml(config))


def render_kubelet(cluster: Cluster, host: Host) -> list[RenderedFile]:
    """The kubelet of ``host`` (master or worker), without its kubeconfig.

    kubeadm: ``kubelet.service``, the drop-in ``kubelet.service.d/10-kubeadm.conf``,
    ``/var/lib/kubelet/kubeadm-flags.env`` with ``kubelet_node_flags``, and the config.
    kubeasz: ``kubelet.service`` with every flag in ExecStart, and the config.
    Both read ``paths.kubelet_kubeconfig`` and ``/var/lib/kubelet/config.yaml``.
    """
    binary = KUBE_BIN_DIR / "kubelet"
    node_flags = kubelet_node_flags(cluster, host)
    kubeconfig_flags = {"kubeconfig": str(cluster.paths.kubelet_kubeconfig)}
    config_flags = {"config": str(KUBELET_CONFIG)}
    config = render_kubelet_config(cluster, host)
    if cluster.layout is Layout.KUBEASZ:
        unit = _unit(cluster, "kubelet", "Kubernetes Kubelet", binary,
                     _flag_list(node_flags | kubeconfig_flags | config_flags), _RESTART)
        return [unit, config]
    units = cluster.paths.units_dir
    flags_env = KUBELET_DIR / "kubeadm-flags.env"
    kubeconfig_flags["bootstrap-kubeconfig"] = str(cluster.paths.kubelet_kubeconfig.parent / "bootstrap-kubelet.conf")
    dropin = render_template("10-kubeadm.conf.j2", binary=binary, flags_env=flags_env,
                             kubeconfig_args=_flag_list(kubeconfig_flags), config_args=_flag_list(config_flags))
    return [
        _unit(cluster, "kubelet", "kubelet: The Kubernetes Node Agent", binary, [],
              (("Restart", "always"), ("StartLimitInterval", "0"), ("RestartSec", "10"))),
        RenderedFile(units / "kubelet.service.d" / "10-kubeadm.conf", dropin),
        RenderedFile(flags_env, f'KUBELET_KUBEADM_ARGS="{" ".join(_flag_list(node_flags))}"\n'),
        config,
    ]
