"""assemble_cluster: the inventory from what the three discover rounds found, without hosts."""

from __future__ import annotations

from ipaddress import IPv4Address

from kubeha.discover.configs import HaproxyConfig, VrrpInstance
from kubeha.discover.discover import ClusterState, HostFacts, SeedMaster, assemble_cluster
from kubeha.inventory import SshDefaults
from kubeha.kube import NodeInfo
from kubeha.model import EtcdTopology, Layout, Role
from kubeha.render.ha import Backend

M1, M2, W1, W2, E1, VIP = (IPv4Address(f"10.0.0.{i}") for i in (11, 12, 31, 32, 41, 100))


def _seed(**changes: object) -> SeedMaster:
    values: dict[str, object] = dict(
        layout=Layout.KUBEASZ,
        flags={"kube-apiserver": {"secure-port": "6443", "service-cluster-ip-range": "10.68.0.0/16"},
               "kube-controller-manager": {"cluster-name": "prod"}},
        cluster_domain="corp.local",
        vrrp=(VrrpInstance(interface="ens3", vrid=77, unicast=True, addresses=((VIP, None),)),),
        haproxy=HaproxyConfig(ports=(8443,), servers=(Backend("m1", str(M1), 6443), Backend("m2", str(M2), 6443)),
                              check={"interval_ms": 2000}),
        admin_server=f"https://{VIP}:8443", admin_cluster_name="cluster1")
    return SeedMaster(**(values | changes))  # type: ignore[arg-type]


STATE = ClusterState(
    etcd_members={M1: "etcd1", M2: "etcd2", E1: "etcd3"},
    nodes=(NodeInfo(str(M1), M1, True), NodeInfo(str(M2), M2, True), NodeInfo(str(W1), W1, False),
           NodeInfo("w2", W2, False)),
    version="v1.29.3")


def test_assemble_names_roles_vip_and_settings():
    facts = {M1: HostFacts("m1", True, None), M2: HostFacts("m1", True, None),  # a duplicated hostname
             W1: HostFacts("w1", False, None), E1: HostFacts("e1", False, None)}  # W2 unreachable
    cluster = assemble_cluster(_seed(), STATE, facts, M1, SshDefaults())
    assert [(h.name, h.address, sorted(r.value for r in h.roles), h.node_name) for h in cluster.hosts] == [
        ("m1", M1, ["etcd", "master"], str(M1)), ("etcd2", M2, ["etcd", "master"], str(M2)),
        ("e1", E1, ["etcd"], None), ("w1", W1, ["worker"], str(W1)), ("w2", W2, ["worker"], None)]
    assert cluster.etcd_topology is EtcdTopology.EXTERNAL
    assert (cluster.name, cluster.cluster_domain, str(cluster.service_cidr)) == ("prod", "corp.local", "10.68.0.0/16")
    assert cluster.vip is not None and (cluster.vip.address, cluster.vip.port, cluster.vip.interface,
                                        cluster.vip.vrid) == (VIP, 8443, "ens3", 77)
    assert cluster.load_balancer.keepalived_unicast and cluster.load_balancer.haproxy_check_interval_ms == 2000
    assert not cluster.node_local_proxy  # the reachable worker has no nginx stream proxy


def test_without_keepalived_the_admin_server_is_the_vip_unless_it_is_a_master():
    facts = {M1: HostFacts("m1", True, None), M2: HostFacts("m2", False, None)}
    cluster = assemble_cluster(_seed(vrrp=(), haproxy=None, admin_server="https://10.0.0.200:6443"),
                               STATE, facts, M1, SshDefaults())
    assert cluster.vip is not None and (str(cluster.vip.address), cluster.vip.port) == ("10.0.0.200", 6443)
    assert [h.name for h in cluster.masters] == ["m1"]  # m2 runs no apiserver
    no_vip = assemble_cluster(_seed(vrrp=(), admin_server=f"https://{M1}:6443"), STATE, facts, M1, SshDefaults())
    assert no_vip.vip is None and no_vip.endpoint == f"https://{M1}:6443"
    assert Role.WORKER in no_vip.host("m2").roles
