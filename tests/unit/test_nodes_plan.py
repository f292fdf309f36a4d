"""Planning `repoint-nodes` and the checks that guard its batches: pure, no hosts."""

from __future__ import annotations

from datetime import datetime, timezone
from ipaddress import IPv4Address

import pytest

from kubeha.errors import InputError
from kubeha.model import Cluster, Host, Layout, Role, VirtualIP
from kubeha.operations.nodes import NodesView, _node_files, _parse_ages, registry, within_budget
from kubeha.operations.nodes_plan import (
    SERVER_SERVED, WITHIN_BUDGET, NodeFiles, RepointFacts, batches, budget_reason, failed_nodes, is_loopback,
    parse_request, parse_url, repoint_plan,
)
from kubeha.plan import Plan, PlanError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
VIP = "https://10.0.0.100:8443"
LOCAL = "https://127.0.0.1:6443"


def cluster(layout: Layout = Layout.KUBEADM, workers: int = 7) -> Cluster:
    hosts = [Host(name=f"master{i}", address=IPv4Address(f"10.0.0.{10 + i}"), roles=frozenset({Role.MASTER, Role.ETCD}))
             for i in range(1, 4)]
    hosts += [Host(name=f"worker{i}", address=IPv4Address(f"10.0.0.{30 + i}"), roles=frozenset({Role.WORKER}),
                   node_name=f"10.0.0.{30 + i}" if layout is Layout.KUBEASZ else None)
              for i in range(1, workers + 1)]
    hosts.append(Host(name="lb1", address=IPv4Address("10.0.0.50"), roles=frozenset({Role.LB})))
    return Cluster(name="t", layout=layout, hosts=tuple(hosts), vip=VirtualIP(address=IPv4Address("10.0.0.100")))


def files(server: str, proxy: str | None = "same", current: bool = True) -> NodeFiles:
    return NodeFiles(kubelet=(server,), kube_proxy=None if proxy is None else ((server if proxy == "same" else proxy),),
                     kubelet_current=current)


def facts_for(c: Cluster, masters: str = VIP, workers: str = LOCAL, **overrides) -> RepointFacts:
    nodes = {h.name: files(masters if h.has(Role.MASTER) else workers) for h in c.hosts
             if h.has(Role.MASTER) or h.has(Role.WORKER)}
    defaults = dict(nodes=nodes, kube_proxy_configmap=(VIP,))
    return RepointFacts(**{**defaults, **overrides})


def plan_for(c: Cluster, facts: RepointFacts | None = None, **arguments: str) -> Plan:
    request = parse_request(arguments)
    return repoint_plan(operation_id="repoint-nodes-1", arguments=arguments, cluster=c, request=request,
                        facts=facts or facts_for(c), inventory_digest="sha256:a", now=NOW)


# ---- the request

def test_the_server_must_be_https_host_port_and_nothing_more():
    assert parse_url(" https://10.0.0.100:8443/ ", "--server") == VIP
    assert parse_url("https://[::1]:6443", "--server") == "https://[::1]:6443"
    for bad in ("http://10.0.0.100:8443", "https://10.0.0.100", "https://10.0.0.100:8443/api", "10.0.0.100:8443",
                "https://u:p@10.0.0.100:8443", "https://10.0.0.100:99999", "https://:8443"):
        with pytest.raises(InputError, match="--server") as e:
            parse_url(bad, "--server")
        assert "\n" not in str(e.value)


def test_the_request_is_validated_before_any_host_is_asked():
    request = parse_request({"server": VIP, "etcd": "https://10.0.0.11:2379, https://10.0.0.12:2379",
                             "hosts": "worker1, worker2,worker1", "batch": "2", "failure_budget": "1"})
    assert request.etcd == ("https://10.0.0.11:2379", "https://10.0.0.12:2379")
    assert request.hosts == ("worker1", "worker2") and request.batch == 2 and request.failure_budget == 1
    with pytest.raises(InputError, match="--server is required"):
        parse_request({})
    with pytest.raises(InputError, match="--batch"):
        parse_request({"server": VIP, "batch": "0"})
    with pytest.raises(InputError, match="--failure-budget"):
        parse_request({"server": VIP, "failure_budget": "many"})
    with pytest.raises(InputError, match="--etcd endpoint"):
        parse_request({"server": VIP, "etcd": "10.0.0.11:2379"})


def test_loopback_urls_are_node_local():
    assert is_loopback(LOCAL) and is_loopback("https://localhost:6443") and is_loopback("https://[::1]:6443")
    assert not is_loopback(VIP)


# ---- batches

def test_masters_go_one_at_a_time_first_then_workers_in_batches():
    c = cluster()
    order = [h for h in reversed(c.hosts) if not h.has(Role.LB)]  # workers first: the plan reorders
    names = [[h.name for h in batch] for batch in batches(order, 3)]
    assert names == [["master3"], ["master2"], ["master1"], ["worker7", "worker6", "worker5"],
                     ["worker4", "worker3", "worker2"], ["worker1"]]


def test_the_plan_repoints_every_node_not_on_the_server_and_names_earlier_batches():
    c = cluster(workers=7)
    plan = plan_for(c, server=VIP)  # the masters name the VIP already
    assert [s.id for s in plan.steps] == ["repoint-workers-1", "repoint-workers-2"]
    first, second = plan.steps
    assert first.hosts == ("worker1", "worker2", "worker3", "worker4", "worker5") and second.hosts == ("worker6", "worker7")
    assert second.arguments["earlier"] == list(first.hosts) and first.arguments["earlier"] == []
    assert first.safety_checks == (WITHIN_BUDGET, SERVER_SERVED)
    assert first.arguments["budget"] == 0 and first.arguments["timeout"] == 60
    changed = {(ch.host, ch.target): (ch.before, ch.after) for ch in first.changes if ch.kind.value == "file"}
    assert changed[("worker1", "/etc/kubernetes/kubelet.conf")] == (LOCAL, VIP)
    assert changed[("worker1", "/var/lib/kube-proxy/kubeconfig.conf")] == (LOCAL, VIP)
    registry.validate(plan)
    assert Plan.from_json(plan.to_json()) == plan


def test_masters_first_and_the_kube_proxy_configmap_last_once_every_node_names_the_server():
    c = cluster(workers=2)
    new = "https://10.0.0.200:8443"
    plan = plan_for(c, server=new, batch="5")
    assert [s.id for s in plan.steps] == ["repoint-master-master1", "repoint-master-master2", "repoint-master-master3",
                                          "repoint-workers-1", "repoint-kube-proxy-configmap"]
    assert plan.steps[3].arguments["earlier"] == ["master1", "master2", "master3"]
    configmap = plan.steps[-1]
    assert configmap.kind == "kube-proxy-configmap-server"
    assert configmap.arguments == {"server": new, "previous": [VIP]}


def test_the_configmap_is_left_alone_when_some_nodes_keep_another_server_or_on_kubeasz():
    c = cluster(workers=2)
    back = plan_for(c, facts_for(c, workers=VIP), server=LOCAL, hosts="worker1,worker2")
    assert [s.id for s in back.steps] == ["repoint-workers-1"]  # the masters stay on the VIP
    kubeasz = cluster(Layout.KUBEASZ, workers=2)
    new = "https://10.0.0.200:8443"
    plan = plan_for(kubeasz, server=new)
    assert "repoint-kube-proxy-configmap" not in [s.id for s in plan.steps]
    assert plan.steps[-1].arguments["nodes"][0] == {"host": "worker1", "node": "10.0.0.31"}


def test_hosts_narrow_the_nodes_and_bad_names_are_refused_all_at_once():
    c = cluster(workers=3)
    plan = plan_for(c, server=VIP, hosts="worker2")
    assert [s.hosts for s in plan.steps] == [("worker2",)]
    with pytest.raises(PlanError) as e:
        plan_for(c, facts_for(c, unreachable={"worker3": "connection refused"}), server=VIP,
                 hosts="nosuch,lb1,worker3")
    text = str(e.value)
    assert "nosuch is not a host" in text and "lb1 is neither a master nor a worker" in text
    assert "worker3 is not reachable over SSH: connection refused" in text and "\n" not in text


def test_a_server_that_does_not_answer_is_refused():
    c = cluster(workers=1)
    with pytest.raises(PlanError, match="is not served: GET /readyz at .* answered HTTP 503"):
        plan_for(c, facts_for(c, not_served=f"GET /readyz at {VIP} answered HTTP 503"), server=VIP)


def test_nothing_to_do_is_said():
    c = cluster(workers=1)
    with pytest.raises(PlanError, match="nothing to do"):
        plan_for(c, facts_for(c, workers=VIP), server=VIP)


def test_a_node_naming_the_server_whose_kubelet_was_not_restarted_is_repointed():
    c = cluster(workers=2)
    facts = facts_for(c, workers=VIP)
    facts.nodes["worker2"] = files(VIP, current=False)  # a crash between writing and restarting
    assert [s.hosts for s in plan_for(c, facts, server=VIP).steps] == [("worker2",)]


def test_a_node_without_a_kube_proxy_kubeconfig_is_repointed_on_its_kubelet_kubeconfig_only():
    c = cluster(workers=1)
    facts = facts_for(c)
    facts.nodes["worker1"] = files(LOCAL, proxy=None)
    step = plan_for(c, facts, server=VIP).steps[0]
    assert [ch.target for ch in step.changes if ch.kind.value == "file"] == ["/etc/kubernetes/kubelet.conf"]


def test_calico_is_repointed_with_etcd_and_refused_without_an_etcd_datastore():
    c = cluster(workers=1)
    old = ("https://10.0.0.11:2379",)
    facts = facts_for(c, calico_endpoints=old, calico_configmap=True, calico_hosts=("master1",))
    plan = plan_for(c, facts, server=VIP, etcd="https://10.0.0.21:2379")
    calico = plan.step("repoint-calico")
    assert calico.kind == "calico-etcd-endpoints"
    assert calico.arguments["etcd_servers"] == ["https://10.0.0.21:2379"] and calico.arguments["previous"] == list(old)
    with pytest.raises(PlanError, match="calico keeps no etcd endpoints"):
        plan_for(c, facts_for(c), server=VIP, etcd="https://10.0.0.21:2379")


# ---- the failure budget, judged from the files

def test_nodes_that_do_not_name_the_server_count_against_the_budget():
    found = {"worker1": files(VIP), "worker2": files(LOCAL), "worker3": files(VIP, proxy=LOCAL), "worker4": None}
    assert failed_nodes(found, ["worker1", "worker2", "worker3", "worker4"], VIP) == ["worker2", "worker3", "worker4"]
    assert budget_reason(["worker2"], 1) is None
    reason = budget_reason(["worker2", "worker3"], 1)
    assert reason is not None and "2 node(s)" in reason and "worker2, worker3" in reason and "budget of 1" in reason


class FakeView(NodesView):
    def __init__(self, found: dict[str, NodeFiles | None]) -> None:
        self._files = dict(found)
        self._ready = {}


def test_the_budget_check_refuses_a_batch_after_too_many_failures_before_it():
    c = cluster(workers=6)
    plan = plan_for(c, server=VIP, batch="2", failure_budget="1")
    third = plan.step("repoint-workers-3")
    one_failed = {f"worker{i}": files(VIP) for i in range(1, 5)} | {"worker2": files(LOCAL)}
    assert within_budget(FakeView(one_failed), third) is None
    two_failed = one_failed | {"worker4": files(LOCAL)}
    assert "worker2, worker4" in (within_budget(FakeView(two_failed), third) or "")


def test_kubelet_age_parsing_tells_a_kubelet_started_after_its_kubeconfigs_changed():
    assert _parse_ages("12 30 30\n") == (12, 30, 30) and _parse_ages("") is None and _parse_ages("x 1") is None
    kubeconfig = b"apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n"
    assert _node_files((5, 9, 9), kubeconfig, None) == NodeFiles(kubelet=(LOCAL,), kube_proxy=None, kubelet_current=True)
    assert not _node_files((900, 9, 9), kubeconfig, kubeconfig).kubelet_current  # written after the kubelet started
    assert not _node_files(None, kubeconfig, kubeconfig).kubelet_current  # no kubelet runs


def test_the_commands_are_registered_and_refuse_a_bad_url_before_connecting(tmp_path):
    from typer.testing import CliRunner

    from kubeha.cli.main import app
    from kubeha.operations import operation

    assert operation("repoint-nodes").registry is registry
    for command in (["plan", "repoint-nodes"], ["repoint-nodes"]):
        result = CliRunner().invoke(app, [*command, "--server", "http://10.0.0.100:8443",
                                          "-i", str(tmp_path / "missing.yaml")])
        assert isinstance(result.exception, InputError), result.output
        assert "must be https://HOST:PORT" in str(result.exception)
