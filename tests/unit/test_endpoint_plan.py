"""Planning `change-endpoint` (pure: no host)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from helpers.plans import NOW, lab_cluster

from kubeha.errors import InputError
from kubeha.lb.plan import lb_configs
from kubeha.model import Cluster
from kubeha.operations.endpoint import registry
from kubeha.operations.endpoint_plan import (
    EndpointFacts, change_endpoint_plan, moved_vip, names_endpoint, parse_request, replace_endpoint, with_vips,
)
from kubeha.plan import PlanError

OLD, NEW = "https://10.0.0.100:8443", "https://10.0.0.200:8443"


def facts_for(cluster: Cluster, **changes) -> EndpointFacts:
    p = cluster.paths
    local = {m.name: f"https://{m.address}:6443" for m in cluster.masters}
    values = dict(
        kubeconfigs={m.name: {str(p.admin_kubeconfig): (OLD,), str(p.controller_manager_kubeconfig): (local[m.name],),
                              str(p.scheduler_kubeconfig): (OLD,)} for m in cluster.masters},
        configmaps={("kube-public", "cluster-info", "kubeconfig"): f"clusters:\n- cluster:\n    server: {OLD}\n",
                    ("kube-system", "kubeadm-config", "ClusterConfiguration"): "controlPlaneEndpoint: 10.0.0.100:8443\n"},
        kube_proxy_configmap=(OLD,))
    values.update(changes)
    return EndpointFacts(**values)


def plan(cluster: Cluster, arguments: dict[str, str], facts: EndpointFacts | None = None):
    return change_endpoint_plan(
        operation_id="op-1", arguments=arguments, cluster=cluster, request=parse_request(cluster, arguments),
        facts=facts or facts_for(cluster), nodes_steps=(), inventory_digest="sha256:a",
        inventory_path=Path("/tmp/cluster.yaml"),
        render_inventory=lambda after: f"vips {','.join(str(v.address) for v in after.vips)}", now=NOW)


def test_the_new_vip_is_served_and_in_every_cert_before_anything_points_at_it_and_the_old_goes_last():
    cluster = lab_cluster()
    p = plan(cluster, {"vip": "10.0.0.200"})
    registry.validate(p)
    ids = [s.id for s in p.steps]
    assert len(ids) == len(set(ids))
    assert ids[0] == "serve-vip-10.0.0.200"
    old, new = {"address": "10.0.0.100", "port": 8443, "vrid": 51}, {"address": "10.0.0.200", "port": 8443, "vrid": 52}
    assert p.steps[0].arguments["vips"] == [old, new]
    switch = ids.index("update-inventory-new-vip")
    for master in ("master1", "master2", "master3"):  # cert, then the apiserver restarted out of the LBs
        assert ids.index(f"apiserver-cert-{master}") < ids.index(f"restart-kube-apiserver-{master}") < switch
        assert p.step(f"restart-kube-apiserver-{master}").arguments["drain"]
        # admin.conf and scheduler.conf named the old VIP: rewritten, the scheduler restarted
        kubeconfigs = p.step(f"control-plane-kubeconfigs-{master}")
        assert ids.index(kubeconfigs.id) > switch and kubeconfigs.arguments["server"] == NEW
        assert kubeconfigs.arguments["paths"] == sorted([str(cluster.paths.admin_kubeconfig),
                                                         str(cluster.paths.scheduler_kubeconfig)])
        assert f"restart-kube-scheduler-{master}" in ids and f"restart-kube-controller-manager-{master}" not in ids
    for step_id in ("repoint-kube-proxy-configmap", "configmap-kube-public-cluster-info",
                    "configmap-kube-system-kubeadm-config"):
        assert switch < ids.index(step_id) < ids.index("retire-vip-10.0.0.100")
    assert p.step("configmap-kube-system-kubeadm-config").arguments["now"] == "10.0.0.200:8443"
    assert ids[-2:] == ["retire-vip-10.0.0.100", "update-inventory-old-vip-gone"]
    assert p.step("retire-vip-10.0.0.100").arguments["vips"] == [new]
    # a resume after the old VIP went must not serve it again
    assert p.steps[0].arguments["accepted"] == [[old, new], [new]]
    inventories = [s for s in p.steps if s.kind == "inventory-update"]
    assert [s.arguments["content"] for s in inventories] == ["vips 10.0.0.200,10.0.0.100", "vips 10.0.0.200"]
    assert inventories[0].arguments["accepted"] == [s.arguments["digest"] for s in inventories]


def test_retire_san_takes_the_old_vip_out_of_every_cert_after_it_is_gone():
    p = plan(lab_cluster(), {"vip": "10.0.0.200", "port": "9443", "vrid": "7", "retire_san": "true"})
    registry.validate(p)
    ids = [s.id for s in p.steps]
    assert p.steps[0].arguments["vips"][1] == {"address": "10.0.0.200", "port": 9443, "vrid": 7}
    tail = ids[ids.index("update-inventory-old-vip-gone") + 1:]
    assert tail == [x for m in ("master1", "master2", "master3")
                    for x in (f"apiserver-cert-{m}-without-old", f"restart-kube-apiserver-{m}-without-old")]
    assert p.step("apiserver-cert-master1-without-old").arguments == {"host": "master1", "add": [],
                                                                     "remove": ["10.0.0.100"]}


def test_nothing_else_is_touched_when_no_consumer_names_the_old_vip():
    cluster = lab_cluster()
    quiet = facts_for(cluster, kubeconfigs={}, configmaps={}, kube_proxy_configmap=None)
    kinds = {s.kind for s in plan(cluster, {"vip": "10.0.0.200"}, quiet).steps}
    assert kinds == {"lb-vips", "apiserver-sans", "restart-component", "inventory-update"}


@pytest.mark.parametrize(("arguments", "message"), [
    ({}, "--vip is required"),
    ({"vip": "10.0.0.300"}, "not an IPv4 address"),
    ({"vip": "10.0.0.200", "port": "70000"}, "not a TCP port"),
    ({"vip": "10.0.0.200", "vrid": "256"}, "not a VRRP router id"),
])
def test_bad_arguments_are_refused_before_any_host_is_asked(arguments, message):
    with pytest.raises(InputError, match=message):
        parse_request(lab_cluster(), arguments)


def test_every_reason_to_refuse_is_given_at_once():
    cluster = lab_cluster(masters=1).model_copy(update={"network": IPv4Network("10.0.0.0/24")})
    with pytest.raises(PlanError) as e:
        plan(cluster, {"vip": "10.0.0.11"}, facts_for(cluster, unreachable={"master1": "connection refused"}))
    for reason in ("10.0.0.11 is the address of master1", "the only master", "master1 is not reachable"):
        assert reason in str(e.value)
    with pytest.raises(PlanError, match="outside the hosts' subnet"):
        plan(cluster, {"vip": "10.0.1.200"})
    with pytest.raises(PlanError, match="is 10.0.0.100:8443 already"):
        plan(lab_cluster(), {"vip": "10.0.0.100"})
    with pytest.raises(PlanError, match="VRID 51 is the VRRP instance of a VIP already"):
        plan(lab_cluster(), {"vip": "10.0.0.200", "vrid": "51"})


def test_an_endpoint_is_named_and_replaced_only_as_a_whole():
    assert names_endpoint("server: https://10.0.0.100:8443", "10.0.0.100:8443")
    assert not names_endpoint("10.0.0.1000:8443 110.0.0.100:8443 10.0.0.100:84430", "10.0.0.100:8443")
    assert replace_endpoint("a 10.0.0.100:8443 b 110.0.0.100:8443", "10.0.0.100:8443", "10.0.0.200:6443") == \
        "a 10.0.0.200:6443 b 110.0.0.100:8443"


def test_the_new_vip_has_a_vrrp_instance_of_its_own_and_haproxy_listens_on_both_ports():
    cluster = lab_cluster()
    new = moved_vip(cluster, parse_request(cluster, {"vip": "10.0.0.200", "port": "6443"}))
    both = with_vips(cluster, [new, cluster.vip])
    assert both.endpoint == "https://10.0.0.200:6443" and new.vrid == cluster.vip.vrid + 1
    configs = {(c.host.name, c.service.unit): c.content.decode() for c in lb_configs(both)}
    instances = configs["master1", "keepalived"].split("vrrp_instance ")[1:]
    assert [i.split()[0] for i in instances] == ["kube_apiserver_vip_52", "kube_apiserver_vip"]  # a name per VRID
    assert "virtual_router_id 52" in instances[0] and "10.0.0.200/32" in instances[0] and "10.0.0.100" not in instances[0]
    assert "virtual_router_id 51" in instances[1] and "10.0.0.100/32" in instances[1]
    assert "bind *:6443" in configs["master1", "haproxy"] and "bind *:8443" in configs["master1", "haproxy"]
    assert IPv4Address("10.0.0.200") == both.vip.address
