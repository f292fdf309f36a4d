"""Which certificates a cluster's hosts carry, with which names, at which paths.

Pure: builds PEM files for a host from the cluster model and its authorities.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import PurePosixPath

from kubeha.model import CertPair, Cluster, Host, Layout
from kubeha.pki import KeyAndCert, SubjectAltNames, issue, new_ca, new_signing_key

KEY_MODE = 0o600
CERT_MODE = 0o644

# Kubernetes identities (CN, O) of the clients the control plane uses.
ADMIN = ("kubernetes-admin", ("system:masters",))
CONTROLLER_MANAGER = ("system:kube-controller-manager", ())
SCHEDULER = ("system:kube-scheduler", ())
KUBE_PROXY = ("system:kube-proxy", ())


def kubelet_identity(host: Host) -> tuple[str, tuple[str, ...]]:
    return (f"system:node:{host.name}", ("system:nodes",))


@dataclass(frozen=True)
class ClusterAuthorities:
    """The cluster CA, the etcd CA (the same CA in the kubeasz layout) and the
    service-account signing key pair, which every apiserver must share."""

    ca: KeyAndCert
    etcd_ca: KeyAndCert
    service_account: tuple[bytes, bytes]  # (private PEM, public PEM)

    def __repr__(self) -> str:
        return "ClusterAuthorities(...)"  # keys stay out of logs

    @classmethod
    def create(cls, layout: Layout) -> ClusterAuthorities:
        ca = new_ca("kubernetes")
        return cls(ca=ca, etcd_ca=new_ca("etcd-ca") if layout is Layout.KUBEADM else ca,
                   service_account=new_signing_key())


def apiserver_sans(cluster: Cluster, host: Host) -> SubjectAltNames:
    """Every name a client may use to reach this apiserver: in-cluster names, the host, the VIP."""
    dns = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{cluster.cluster_domain}", host.name, "localhost")
    ips: list[IPv4Address] = [cluster.service_ip, host.address, IPv4Address("127.0.0.1")]
    if cluster.vip is not None:
        ips.append(cluster.vip.address)
    return SubjectAltNames(dns_names=dns, ip_addresses=tuple(ips))


def etcd_member_sans(host: Host) -> SubjectAltNames:
    return SubjectAltNames(dns_names=(host.name, "localhost"),
                           ip_addresses=(host.address, IPv4Address("127.0.0.1")))


PkiFiles = dict[PurePosixPath, tuple[bytes, int]]


def _pair_files(pair: CertPair, kc: KeyAndCert) -> PkiFiles:
    return {pair.cert: (kc.cert_pem, CERT_MODE), pair.key: (kc.key_pem, KEY_MODE)}


def ca_files(cluster: Cluster, auth: ClusterAuthorities, *, with_keys: bool) -> PkiFiles:
    """The CA certs (and keys, on masters: they sign kubelet and service-account material)."""
    paths = cluster.paths
    files: PkiFiles = {paths.ca.cert: (auth.ca.cert_pem, CERT_MODE)}
    files[paths.etcd_ca.cert] = (auth.etcd_ca.cert_pem, CERT_MODE)
    if with_keys:
        files.update(_pair_files(paths.ca, auth.ca))
        files.update(_pair_files(paths.etcd_ca, auth.etcd_ca))
    return files


def etcd_member_files(cluster: Cluster, host: Host, auth: ClusterAuthorities) -> PkiFiles:
    paths = cluster.paths
    sans = etcd_member_sans(host)
    files: PkiFiles = {}
    server = issue(auth.etcd_ca, host.name, sans=sans, server=True, client=True)
    files.update(_pair_files(paths.etcd_server, server))
    if paths.etcd_peer != paths.etcd_server:
        files.update(_pair_files(paths.etcd_peer, issue(auth.etcd_ca, host.name, sans=sans,
                                                        server=True, client=True)))
    if paths.etcd_client not in (paths.etcd_server, paths.etcd_peer):
        files.update(_pair_files(paths.etcd_client, issue(auth.etcd_ca, "kube-etcd-healthcheck-client",
                                                          client=True)))
    return files


def apiserver_files(cluster: Cluster, host: Host, auth: ClusterAuthorities) -> PkiFiles:
    paths = cluster.paths
    files = _pair_files(paths.apiserver, issue(auth.ca, "kube-apiserver",
                                               sans=apiserver_sans(cluster, host),
                                               server=True, client=True))
    if paths.apiserver_etcd_client != paths.apiserver:
        files.update(_pair_files(paths.apiserver_etcd_client,
                                 issue(auth.etcd_ca, "kube-apiserver-etcd-client",
                                       organizations=("system:masters",), client=True)))
    if paths.apiserver_kubelet_client != paths.apiserver:
        files.update(_pair_files(paths.apiserver_kubelet_client,
                                 issue(auth.ca, "kube-apiserver-kubelet-client",
                                       organizations=("system:masters",), client=True)))
    if paths.service_account_key != paths.ca.key:
        private, public = auth.service_account
        files[paths.service_account_key] = (private, KEY_MODE)
        files[paths.service_account_pub] = (public, CERT_MODE)
    return files


def client_cert(auth: ClusterAuthorities, identity: tuple[str, tuple[str, ...]]) -> KeyAndCert:
    common_name, organizations = identity
    return issue(auth.ca, common_name, organizations=organizations, client=True)
