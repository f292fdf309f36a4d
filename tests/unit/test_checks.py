"""Every check on hand-built snapshots: a healthy cluster passes, and each broken thing gives
its exact one-line reason."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface

import pytest

from kubeha.checks import Status, exit_code, run_checks, summary
from kubeha.checks.certs import check_apiserver_sans, check_cert_expiry
from kubeha.checks.endpoints import (
    check_apiserver_ready, check_keepalived, check_kubeconfigs, check_lb_backends, check_node_proxy_backends,
    check_vip_holder,
)
from kubeha.checks.etcd import (
    check_etcd_alarms, check_etcd_db_size, check_etcd_health, check_etcd_leader, check_etcd_learners,
    check_etcd_quorum, check_etcd_servers, check_etcd_versions,
)
from kubeha.checks.facts import CertFile, DiskSpace, FstabLine, Readiness
from kubeha.checks.hosts import check_clock, check_etcd_disk, check_fstab, check_services, check_ssh, check_sudo
from kubeha.checks.result import CheckResult, failed, passed, warned
from kubeha.checks.snapshot import (
    ApiProbe, ClusterSnapshot, EtcdAlarm, EtcdSnapshot, HostSnapshot, MemberHealth, UNITS,
)
from kubeha.discover.configs import HaproxyConfig, NodeProxyConfig, VrrpInstance
from kubeha.etcd.gateway import EtcdMember, EtcdStatus
from kubeha.hosts.facts import InterfaceAddress
from kubeha.model import Cluster, Host, Layout, Role, VirtualIP
from kubeha.pki import SubjectAltNames
from kubeha.render import Backend

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
VIP = IPv4Address("10.0.0.100")
GiB = 2**30


def _cluster() -> Cluster:
    masters = [Host(name=f"master{i}", address=f"10.0.0.1{i}", roles={Role.MASTER, Role.ETCD}) for i in (1, 2, 3)]
    workers = [Host(name=f"worker{i}", address=f"10.0.0.3{i}", roles={Role.WORKER}) for i in (1, 2)]
    return Cluster(name="c", layout=Layout.KUBEADM, hosts=(*masters, *workers), vip=VirtualIP(address=VIP))


CLUSTER = _cluster()
PATHS = CLUSTER.paths
MEMBER_IDS = {m.name: i for i, m in enumerate(CLUSTER.masters, 1)}
MASTER_BACKENDS = tuple(Backend(m.name, str(m.address), 6443) for m in CLUSTER.masters)
OK = Readiness(True, "ok")


def _apiserver_cert(host: Host) -> CertFile:
    return CertFile(str(PATHS.apiserver.cert), NOW + dt.timedelta(days=365), SubjectAltNames(
        dns_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
        ip_addresses=(IPv4Address("10.96.0.1"), VIP, host.address, IPv4Address("127.0.0.1"))))


def _host(host: Host) -> HostSnapshot:
    master, worker = host in CLUSTER.masters, host in CLUSTER.workers
    kubeconfigs = {str(PATHS.kubelet_kubeconfig): ("https://127.0.0.1:6443",) if worker else (CLUSTER.endpoint,)}
    if master:
        kubeconfigs[str(PATHS.admin_kubeconfig)] = (CLUSTER.endpoint,)
        kubeconfigs[str(PATHS.scheduler_kubeconfig)] = (f"https://{host.address}:6443",)
    return HostSnapshot(
        host=host, uid=0, clock_skew=0.0, units={u: "active" for u in UNITS}, kubeconfigs=kubeconfigs,
        addresses=(InterfaceAddress("eth0", IPv4Interface(f"{host.address}/24")),)
        + ((InterfaceAddress("eth0", IPv4Interface(f"{VIP}/32")),) if host.name == "master1" else ()),
        etcd_disk=DiskSpace("/", 100 * GiB, 50 * GiB) if master else None,
        apiserver_flags={"etcd-servers": "https://127.0.0.1:2379"} if master else None,
        etcd_flags={} if master else None,
        haproxy=HaproxyConfig(ports=(8443,), servers=MASTER_BACKENDS, check={}) if master else None,
        keepalived=(VrrpInstance("eth0", 51, False, ((VIP, "eth0"),)),) if master else None,
        node_proxy=NodeProxyConfig(6443, MASTER_BACKENDS) if worker else None,
        certs=(CertFile(str(PATHS.ca.cert), NOW + dt.timedelta(days=3650), SubjectAltNames()),)
        + ((_apiserver_cert(host),) if master else ()),
        lb_readiness={8443: OK} if master else {},
        node_proxy_readiness=OK if worker else None,
    )


def _status(name: str, **changes) -> EtcdStatus:
    return replace(EtcdStatus(endpoint=f"https://{CLUSTER.host(name).address}:2379", member_id=MEMBER_IDS[name],
                              leader=1, raft_index=100, raft_term=2, db_size=100 * 2**20, version="3.5.9",
                              is_learner=False), **changes)


def _etcd() -> EtcdSnapshot:
    members = tuple(EtcdMember(MEMBER_IDS[m.name], m.name, (f"https://{m.address}:2380",),
                               (f"https://{m.address}:2379",), False) for m in CLUSTER.masters)
    health = tuple(MemberHealth(m.name, f"https://{m.address}:2379", _status(m.name), True) for m in CLUSTER.masters)
    return EtcdSnapshot(members=members, health=health)


def healthy() -> ClusterSnapshot:
    probes = tuple(ApiProbe(f"directly ({m.name})", f"https://{m.address}:6443", OK) for m in CLUSTER.masters)
    return ClusterSnapshot(cluster=CLUSTER, taken_at=NOW, hosts=tuple(_host(h) for h in CLUSTER.hosts),
                           etcd=_etcd(), apiservers=probes + (ApiProbe("through the VIP", CLUSTER.endpoint, OK),))


def with_host(snapshot: ClusterSnapshot, name: str, **changes) -> ClusterSnapshot:
    hosts = tuple(replace(h, **changes) if h.name == name else h for h in snapshot.hosts)
    return replace(snapshot, hosts=hosts)


def with_etcd(snapshot: ClusterSnapshot, **changes) -> ClusterSnapshot:
    return replace(snapshot, etcd=replace(snapshot.etcd, **changes))


def with_member(snapshot: ClusterSnapshot, name: str, **changes) -> ClusterSnapshot:
    health = tuple(replace(m, **changes) if m.host == name else m for m in snapshot.etcd.health)
    return with_etcd(snapshot, health=health)


def not_passed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status is not Status.PASS]


# ---- the whole run ---------------------------------------------------------------------


def test_a_healthy_cluster_passes_every_check():
    results = run_checks(healthy())
    assert not_passed(results) == []
    assert exit_code(results) == 0
    assert summary(results) == f"{len(results)} passed, 0 warned, 0 failed"


def test_exit_code_is_1_on_a_failure_and_2_on_warnings_only():
    assert exit_code([passed("a", "x", "ok"), warned("a", "y", "hm")]) == 2
    assert exit_code([warned("a", "y", "hm"), failed("a", "z", "no")]) == 1


def test_every_reason_is_one_line_and_every_problem_is_listed():
    broken = with_host(healthy(), "worker1", ssh_error="worker1: no SSH answer")
    broken = with_member(broken, "master3", status=None, healthy=False, error="connection refused")
    results = not_passed(run_checks(broken))
    assert {(r.name, r.subject) for r in results} >= {("ssh", "worker1"), ("etcd health", "master3")}
    assert all("\n" not in r.reason for r in results)


# ---- hosts -----------------------------------------------------------------------------


def test_ssh_and_sudo():
    snapshot = with_host(healthy(), "worker1", ssh_error="worker1: cannot reach SSH")
    snapshot = with_host(snapshot, "worker2", sudo_error="worker2: sudo refused")
    snapshot = with_host(snapshot, "master2", uid=1000)
    assert not_passed(check_ssh(snapshot)) == [failed("ssh", "worker1", "worker1: cannot reach SSH")]
    assert not_passed(check_sudo(snapshot)) == [
        failed("sudo", "master2", "commands run as uid 1000, not root: set ssh.sudo: true in the inventory, "
                                  "or log in as root"),
        failed("sudo", "worker2", "worker2: sudo refused")]


@pytest.mark.parametrize("skew, expected", [
    (0.4, []),
    (-0.9, [warned("clock", "worker1", "clock is -0.9 s off this machine's (more than 0.5 s); sync it with NTP")]),
    (3.0, [failed("clock", "worker1", "clock is +3.0 s off this machine's (more than 2 s): leases and "
                                      "certificates misbehave; sync it with NTP")]),
])
def test_clock_skew(skew, expected):
    assert not_passed(check_clock(with_host(healthy(), "worker1", clock_skew=skew))) == expected


@pytest.mark.parametrize("size, free, expected", [
    (100 * GiB, 15 * GiB, [warned("etcd disk", "master1", "only 15.0 GiB free (15%) on / for /var/lib/etcd")]),
    (100 * GiB, GiB, [failed("etcd disk", "master1", "only 1.0 GiB free (1%) on / for /var/lib/etcd: etcd "
                                                     "needs 2 GiB to grow and defragment")]),
])
def test_etcd_disk(size, free, expected):
    snapshot = with_host(healthy(), "master1", etcd_disk=DiskSpace("/", size, free))
    assert not_passed(check_etcd_disk(snapshot)) == expected


def test_fstab_lists_every_bad_line():
    bad = (FstabLine(3, "/dev/sdb1 /data"), FstabLine(7, "UUID=1234"))
    assert not_passed(check_fstab(with_host(healthy(), "master2", fstab_bad_lines=bad))) == [
        failed("fstab", "master2", "/etc/fstab line 3 has 2 fields, mount needs 4: '/dev/sdb1 /data'"),
        failed("fstab", "master2", "/etc/fstab line 7 has 1 fields, mount needs 4: 'UUID=1234'")]


def test_services_by_role():
    units = {u: "active" for u in UNITS} | {"keepalived": "failed", "nginx": "inactive", "etcd": "inactive"}
    snapshot = with_host(healthy(), "master1", units=units)
    snapshot = with_host(snapshot, "worker1", units={u: "active" for u in UNITS} | {"nginx": "inactive"})
    # kubeadm: etcd runs as a static pod, nginx runs only where a node-local proxy is
    assert not_passed(check_services(snapshot)) == [
        failed("services", "master1", "keepalived is failed"),
        failed("services", "worker1", "nginx is inactive")]


# ---- etcd ------------------------------------------------------------------------------


def test_etcd_member_down_and_unhealthy():
    snapshot = with_member(healthy(), "master3", status=None, healthy=False, error="connection refused")
    snapshot = with_member(snapshot, "master2", healthy=False, error="etcdserver: request timed out")
    assert not_passed(check_etcd_health(snapshot)) == [
        failed("etcd health", "master2", "https://10.0.0.12:2379 answers but cannot serve a linearizable read: "
                                         "etcdserver: request timed out"),
        failed("etcd health", "master3", "https://10.0.0.13:2379 does not answer: connection refused")]


def test_etcd_quorum():
    one_down = with_member(healthy(), "master3", status=None, healthy=False)
    assert check_etcd_quorum(one_down) == [
        warned("etcd quorum", "etcd", "2 of 3 voting members healthy (quorum 2): one more failure stops etcd")]
    two_down = with_member(one_down, "master2", status=None, healthy=False)
    assert check_etcd_quorum(two_down) == [
        failed("etcd quorum", "etcd", "only 1 of 3 voting members healthy, quorum is 2: etcd accepts no writes")]
    assert check_etcd_quorum(with_etcd(healthy(), member_list_error="no endpoint answered")) == [
        failed("etcd quorum", "etcd", "cannot list the members: no endpoint answered")]


def test_etcd_quorum_does_not_count_learners():
    members = healthy().etcd.members
    snapshot = with_etcd(healthy(), members=members + (EtcdMember(9, "spare1", (), (), True),))
    assert check_etcd_quorum(snapshot) == [passed("etcd quorum", "etcd", "3 of 3 voting members healthy (quorum 2)")]
    assert check_etcd_learners(snapshot) == [
        warned("etcd learners", "spare1", "is a learner: it does not vote until promoted")]


def test_etcd_leader():
    assert check_etcd_leader(healthy()) == [passed("etcd leader", "etcd", "leader is master1")]
    split = with_member(healthy(), "master3", status=_status("master3", leader=3))
    assert check_etcd_leader(split) == [failed("etcd leader", "etcd", "members disagree on the leader: master1, master3")]
    none = healthy()
    for name in MEMBER_IDS:
        none = with_member(none, name, status=_status(name, leader=0))
    assert check_etcd_leader(none) == [failed("etcd leader", "etcd", "no member knows a leader")]


def test_etcd_versions_and_db_size():
    snapshot = with_member(healthy(), "master2", status=_status("master2", version="3.4.23", db_size=int(1.8 * GiB)))
    assert check_etcd_versions(snapshot) == [
        warned("etcd versions", "etcd", "members run different versions: master1 3.5.9, master2 3.4.23, master3 3.5.9")]
    assert not_passed(check_etcd_db_size(snapshot)) == [
        warned("etcd db size", "master2", "database 1.8 GiB is 90% of the 2.0 GiB quota: compact and defragment "
                                          "before it fills")]
    bigger_quota = with_host(snapshot, "master2", etcd_flags={"quota-backend-bytes": str(8 * GiB)})
    assert not_passed(check_etcd_db_size(bigger_quota)) == []


def test_etcd_alarms():
    snapshot = with_etcd(healthy(), alarms=(EtcdAlarm(2, "NOSPACE"),))
    assert check_etcd_alarms(snapshot) == [
        failed("etcd alarms", "master2", "NOSPACE alarm raised: etcd refuses writes until it is resolved and disarmed")]
    assert check_etcd_alarms(with_etcd(healthy(), alarms_error="timed out")) == [
        failed("etcd alarms", "etcd", "cannot read the alarms: timed out")]


def test_etcd_servers():
    snapshot = with_host(healthy(), "master1", apiserver_flags={
        "etcd-servers": "https://10.0.0.11:2379,https://10.0.0.21:2379"})
    snapshot = with_host(snapshot, "master2", apiserver_flags={"etcd-servers": "https://10.0.0.11:2379,https://10.0.0.13:2379"})
    snapshot = with_member(snapshot, "master3", status=None, healthy=False)
    snapshot = with_host(snapshot, "master3", apiserver_flags=None)
    assert not_passed(check_etcd_servers(snapshot)) == [
        failed("etcd servers", "master1", "--etcd-servers lists https://10.0.0.21:2379, which no etcd member serves"),
        warned("etcd servers", "master2", "https://10.0.0.13:2379 of --etcd-servers is not healthy"),
        failed("etcd servers", "master3", "cannot read the apiserver's flags: "
                                          "/etc/kubernetes/manifests/kube-apiserver.yaml is missing")]


def test_etcd_servers_local_member_down():
    snapshot = with_member(healthy(), "master2", status=None, healthy=False)
    assert not_passed(check_etcd_servers(snapshot)) == [
        failed("etcd servers", "master2", "no --etcd-servers is healthy (https://127.0.0.1:2379): the apiserver "
                                          "cannot serve")]


# ---- endpoints -------------------------------------------------------------------------


def test_apiserver_ready_every_way():
    snapshot = replace(healthy(), apiservers=(
        ApiProbe("through the VIP", CLUSTER.endpoint, Readiness(False, "HTTP 500: [-]etcd failed: timeout")),))
    snapshot = with_host(snapshot, "master2", lb_readiness={8443: Readiness(False, "connection refused")})
    snapshot = with_host(snapshot, "worker2", node_proxy_readiness=Readiness(False, "timed out"))
    assert not_passed(check_apiserver_ready(snapshot)) == [
        failed("apiserver ready", "https://10.0.0.100:8443", "/readyz through the VIP failed: HTTP 500: "
                                                             "[-]etcd failed: timeout"),
        failed("apiserver ready", "master2 haproxy :8443", "/readyz through haproxy failed: connection refused"),
        failed("apiserver ready", "worker2 node-local proxy :6443", "/readyz through the node-local proxy "
                                                                    "failed: timed out")]


def test_vip_holder():
    vip_address = (InterfaceAddress("eth0", IPv4Interface(f"{VIP}/32")),)
    nobody = with_host(healthy(), "master1", addresses=())
    assert check_vip_holder(nobody) == [failed("VIP holder", "VIP 10.0.0.100", "no host holds the VIP: keepalived "
                                                                               "is down or its check fails on every LB host")]
    two = with_host(healthy(), "master3", addresses=vip_address)
    assert check_vip_holder(two) == [failed("VIP holder", "VIP 10.0.0.100", "held by master1 and master3 at once: "
                                                                            "split brain, VRRP adverts do not get through")]


def test_keepalived_config_matches_the_inventory():
    snapshot = with_host(healthy(), "master2", keepalived=(VrrpInstance("eth0", 52, False, ((VIP, "eth0"),)),))
    snapshot = with_host(snapshot, "master3", keepalived=(VrrpInstance("eth0", 51, False, ()),))
    assert not_passed(check_keepalived(snapshot)) == [
        failed("keepalived", "master2", "the VIP 10.0.0.100 is in virtual_router_id 52, the inventory says 51"),
        failed("keepalived", "master3", "no vrrp_instance holds the VIP 10.0.0.100")]


def test_lb_backends_stale_and_missing():
    servers = MASTER_BACKENDS[:2] + (Backend("old", "10.0.0.9", 6443),)
    snapshot = with_host(healthy(), "master1", haproxy=HaproxyConfig(ports=(9443,), servers=servers, check={}))
    snapshot = with_host(snapshot, "master2", haproxy=None, unreadable={"haproxy": "finding the x failed"})
    assert not_passed(check_lb_backends(snapshot)) == [
        failed("LB backends", "master1", "haproxy does not listen on the VIP port 8443; stale backend 10.0.0.9:6443 "
                                         "is no master's apiserver; master master3 (10.0.0.13:6443) is no backend"),
        failed("LB backends", "master2", "cannot read /etc/haproxy/haproxy.cfg: finding the x failed")]


def test_node_proxy_backends():
    stale = NodeProxyConfig(6443, MASTER_BACKENDS + (Backend("10.0.0.21", "10.0.0.21", 6443),))
    snapshot = with_host(healthy(), "worker1", node_proxy=stale)
    snapshot = with_host(snapshot, "worker2", node_proxy=None)
    assert not_passed(check_node_proxy_backends(snapshot)) == [
        failed("node-local proxy", "worker1", "stale backend 10.0.0.21:6443 is no master's apiserver"),
        failed("node-local proxy", "worker2", "cannot read /etc/nginx/nginx.conf: no such file")]


def test_kubeconfigs_must_use_an_ha_endpoint():
    worker = with_host(healthy(), "worker1", kubeconfigs={str(PATHS.kubelet_kubeconfig): ("https://10.0.0.11:6443",),
                                                          str(PATHS.kube_proxy_kubeconfig): ("https://10.0.0.9:6443",)})
    assert not_passed(check_kubeconfigs(worker)) == [
        failed("kubeconfigs", "worker1", "/etc/kubernetes/kubelet.conf points at https://10.0.0.11:6443 (only "
                                         "master master1), not https://127.0.0.1:6443"),
        failed("kubeconfigs", "worker1", "/var/lib/kube-proxy/kubeconfig.conf points at https://10.0.0.9:6443 "
                                         "(no HA endpoint), not https://127.0.0.1:6443")]
    # a master's own apiserver is fine for the scheduler, not for the admin
    master = with_host(healthy(), "master2", kubeconfigs={str(PATHS.scheduler_kubeconfig): ("https://10.0.0.12:6443",),
                                                          str(PATHS.admin_kubeconfig): ("https://10.0.0.12:6443",)})
    assert not_passed(check_kubeconfigs(master)) == [
        failed("kubeconfigs", "master2", "/etc/kubernetes/admin.conf points at https://10.0.0.12:6443 (only master "
                                         "master2), not https://10.0.0.100:8443")]
    unreadable = with_host(healthy(), "worker2", unreadable={"kubeconfig /etc/x.conf": "not valid YAML"})
    assert not_passed(check_kubeconfigs(unreadable)) == [
        failed("kubeconfigs", "worker2", "cannot read /etc/x.conf: not valid YAML")]


# ---- certificates ----------------------------------------------------------------------


def test_cert_expiry():
    certs = (CertFile("/p/old.crt", NOW - dt.timedelta(days=1), SubjectAltNames()),
             CertFile("/p/soon.crt", NOW + dt.timedelta(days=10, hours=1), SubjectAltNames()),
             CertFile("/p/broken.pem", None, SubjectAltNames()),
             CertFile("/p/fine.crt", NOW + dt.timedelta(days=300), SubjectAltNames()))
    results = check_cert_expiry(with_host(healthy(), "worker1", certs=certs))
    assert [r for r in results if r.subject == "worker1"] == [
        failed("cert expiry", "worker1", "/p/old.crt expired on 2026-05-31"),
        warned("cert expiry", "worker1", "/p/soon.crt expires on 2026-06-11, in 10 days"),
        warned("cert expiry", "worker1", "/p/broken.pem holds no readable certificate")]
    assert check_cert_expiry(healthy())[0] == passed(
        "cert expiry", "master1", "2 certificates valid 30+ days; first to expire: /etc/kubernetes/pki/apiserver.crt "
                                  "on 2027-06-01")


def test_apiserver_sans():
    cert = _apiserver_cert(CLUSTER.host("master2"))
    without = replace(cert, sans=cert.sans.without(SubjectAltNames(dns_names=("kubernetes.default.svc",),
                                                                   ip_addresses=(VIP,))))
    ca = healthy().host("master2").certs[0]
    snapshot = with_host(healthy(), "master2", certs=(ca, without))
    snapshot = with_host(snapshot, "master3", certs=(ca,))
    assert not_passed(check_apiserver_sans(snapshot)) == [
        failed("apiserver SANs", "master2", "/etc/kubernetes/pki/apiserver.crt lacks kubernetes.default.svc, "
                                            "10.0.0.100: clients using them fail TLS"),
        failed("apiserver SANs", "master3", "cannot read /etc/kubernetes/pki/apiserver.crt: no such certificate")]
