"""Planning a rolling restart, proving a restart from the listening process, and the
restart annotation of a static pod: pure, no hosts."""

from __future__ import annotations

import pytest
from helpers.plans import lab_cluster, member, restart_plan as plan
from test_etcd_plan import step, view

from kubeha.errors import InputError
from kubeha.model import Layout
from kubeha.operations.components import parse_listener
from kubeha.operations.etcd_view import majority_while_down
from kubeha.operations.restart import registry
from kubeha.operations.restart_plan import parse_components
from kubeha.plan import PlanError
from kubeha.render.flags import pod_annotation, with_pod_annotation


def test_default_restarts_each_master_in_turn_with_its_apiserver_drained():
    p = plan(lab_cluster())
    assert [s.id for s in p.steps] == [f"restart-{c}-master{i}" for i in (1, 2, 3)
                                       for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    apiserver = p.step("restart-kube-apiserver-master1")
    assert apiserver.arguments["drain"] is True
    assert set(apiserver.safety_checks) == {"load balancers: each keeps another ready apiserver",
                                            "VIP: held by a load balancer host"}
    assert p.step("restart-kube-scheduler-master1").arguments["drain"] is False
    registry.validate(p)


def test_a_static_pod_restart_shows_its_manifest_change_and_a_unit_does_not():
    kubeadm = plan(lab_cluster(Layout.KUBEADM)).step("restart-kube-apiserver-master1")
    kubeasz = plan(lab_cluster(Layout.KUBEASZ)).step("restart-kube-apiserver-master1")
    assert [c.target for c in kubeadm.changes if c.kind.value == "file"] == [
        "/etc/kubernetes/manifests/kube-apiserver.yaml"]
    assert [c for c in kubeasz.changes if c.kind.value == "file"] == []


def test_etcd_restarts_followers_first_and_moves_leadership_off_the_leader_before_it():
    p = plan(lab_cluster(), "etcd,kube-apiserver", leader_host="master1")
    assert [s.id for s in p.steps] == [
        "restart-etcd-master2", "restart-kube-apiserver-master2", "restart-etcd-master3",
        "restart-kube-apiserver-master3", "move-leader-off-master1", "restart-etcd-master1",
        "restart-kube-apiserver-master1"]
    etcd = p.step("restart-etcd-master2")
    assert etcd.arguments["drain"] is True  # a stacked apiserver is not ready while its member restarts
    assert "etcd: a healthy majority of voters remains while the member restarts" in etcd.safety_checks
    registry.validate(p)


def test_components_are_restarted_in_a_fixed_order_whatever_the_order_named():
    assert parse_components("kube-scheduler,etcd") == ("etcd", "kube-scheduler")


def test_the_restart_timeout_is_seconds_within_reason():
    from kubeha.operations.restart_plan import parse_timeout

    assert parse_timeout(None) == 120 and parse_timeout("30") == 30
    for bad in ("0", "soon", "99999"):
        with pytest.raises(InputError, match="between 5 and 3600"):
            parse_timeout(bad)
    assert plan(lab_cluster()).steps[0].arguments["timeout"] == 120


@pytest.mark.parametrize("components, hosts, message", [
    ("kubelet", "", "cannot restart kubelet"),
    ("", "nosuch", "not in the inventory: nosuch"),
])
def test_bad_input_is_refused_by_name(components, hosts, message):
    with pytest.raises(InputError, match=message):
        plan(lab_cluster(), components, hosts)


@pytest.mark.parametrize("cluster, components, hosts, unhealthy, message", [
    (lab_cluster(masters=1), "", "", (), "only master"),
    (lab_cluster(), "", "worker1", (), "worker1 runs none of"),
    (lab_cluster(), "etcd", "", ("master2: connection refused",), "etcd member not healthy: master2"),
    (lab_cluster(masters=1), "etcd", "", (), "restarting one loses quorum"),
])
def test_unsafe_restarts_are_refused_with_every_reason(cluster, components, hosts, unhealthy, message):
    with pytest.raises(PlanError, match=message):
        plan(cluster, components, hosts, unhealthy=unhealthy)


def test_flags_set_with_the_restart_are_shown_and_passed_to_each_step():
    p = plan(lab_cluster(Layout.KUBEASZ), "etcd", set_flags="--heartbeat-interval=50,election-timeout=500")
    for s in p.steps:
        if s.kind == "restart-component":
            assert s.arguments["flags"] == {"heartbeat-interval": "50", "election-timeout": "500"}
            assert [(c.target, c.after) for c in s.changes if c.kind.value == "file"] == [
                ("/etc/systemd/system/etcd.service --heartbeat-interval", "50"),
                ("/etc/systemd/system/etcd.service --election-timeout", "500")]
            assert s.title.endswith("with --heartbeat-interval, --election-timeout set (out of every load balancer meanwhile)")
            assert s.rollback.startswith("its file restored from the backup")
    registry.validate(p)


@pytest.mark.parametrize("components, flags, message", [
    ("etcd", "election-timeout", "'election-timeout' is not FLAG=VALUE"),
    ("etcd", "election-timeout=5 00", "not FLAG=VALUE"),
    ("etcd", "Election=1", "not FLAG=VALUE"),
    ("etcd", "election-timeout=500,election-timeout=600", "--election-timeout is set twice"),
    ("kube-apiserver", "etcd-servers=https://10.0.0.21:2379", "--etcd-servers is kept right by kubeha"),
    ("etcd", "initial-cluster=a=b", "--initial-cluster is kept right"),
])
def test_bad_flags_are_refused_by_name(components, flags, message):
    with pytest.raises(InputError, match=message):
        plan(lab_cluster(), components, set_flags=flags)


@pytest.mark.parametrize("components, flags, message", [
    ("etcd,kube-apiserver", "v=2", "name one component with --set"),
    ("etcd", "election-timeout=400", r"--election-timeout \(400 ms\) must be at least 5 times --heartbeat-interval \(100 ms"),
    ("etcd", "heartbeat-interval=50,election-timeout=200", "at least 5 times"),
    ("etcd", "heartbeat-interval=fast", "are milliseconds"),
])
def test_flags_etcd_would_refuse_or_that_fit_no_one_program_are_refused(components, flags, message):
    with pytest.raises(PlanError, match=message):
        plan(lab_cluster(), components, set_flags=flags)


def test_a_member_may_restart_only_while_the_others_keep_quorum():
    cluster = lab_cluster()
    m1, m2, m3 = (member(h) for h in cluster.etcd_members)
    restart_m1 = step("restart-component", cluster.host("master1"), component="etcd")
    assert majority_while_down(view(cluster, [m1, m2, m3], m1), restart_m1) is None
    why = majority_while_down(view(cluster, [m1, m2, m3], m1, down=("master2",)), restart_m1)
    assert why is not None and "1 healthy of 3 voters remain" in why


def test_the_listening_process_is_read_with_its_start_and_command_line():
    shown = "now 1700000100\npid 4242 1700000090\narg kube-apiserver\narg --etcd-servers=https://a:2379\n"
    process = parse_listener(shown)
    assert (process.pid, process.started, process.now) == (4242, 1700000090.0, 1700000100.0)
    assert process.flags == {"etcd-servers": "https://a:2379"}
    assert process.started_since(1700000090.5) and not process.started_since(1700000095)
    nothing = parse_listener("now 1700000100\n")
    assert nothing.pid is None and nothing.flags is None and not nothing.started_since(0)


MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  # kubeadm writes this
  labels:
    component: kube-apiserver
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --secure-port=6443
"""


def test_the_restart_annotation_changes_only_the_annotations():
    once = with_pod_annotation(MANIFEST, "kubeha.io/restarted-by", "op/step")
    assert pod_annotation(once, "kubeha.io/restarted-by") == "op/step"
    assert "# kubeadm writes this" in once and "- --secure-port=6443" in once
    twice = with_pod_annotation(once, "kubeha.io/restarted-by", "op2/step")
    assert pod_annotation(twice, "kubeha.io/restarted-by") == "op2/step"
    assert pod_annotation(MANIFEST, "kubeha.io/restarted-by") is None
    with pytest.raises(InputError, match="not a static pod manifest"):
        with_pod_annotation("- a list", "k", "v")
