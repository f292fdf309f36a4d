from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from pydantic import ValidationError

from kubeha.errors import InputError
from kubeha.lab.topology import (
    LabSpec as _LabSpec, host_services, lab_topology, light_topology, node_client_endpoint,
)
from kubeha.model import Cluster, Host, Layout, Role


def LabSpec(**kwargs) -> _LabSpec:
    return _LabSpec(**{"subnet": IPv4Network("10.212.0.0/24"), **kwargs})


def test_hosts_must_have_unique_names_and_addresses():
    a = Host(name="a", address=IPv4Address("10.0.0.1"))
    with pytest.raises(ValidationError, match="share the address"):
        Cluster(hosts=(a, Host(name="b", address=IPv4Address("10.0.0.1"))))
    with pytest.raises(ValidationError, match="share the name"):
        Cluster(hosts=(a, Host(name="a", address=IPv4Address("10.0.0.2"))))


def test_the_endpoint_is_the_vip_when_there_is_one():
    topology = lab_topology(LabSpec())
    c = topology.cluster
    assert c.endpoint == "https://10.212.0.100:8443"
    assert [h.name for h in c.masters] == ["master1", "master2", "master3"]
    assert [h.name for h in topology.spares] == ["spare1", "spare2", "spare3"]
    assert c.etcd_initial_cluster().startswith("master1=https://10.212.0.11:2380,")
    assert c.service_ip == IPv4Address("10.96.0.1")


@pytest.mark.parametrize("layout", list(Layout))
def test_lab_topology_services_and_endpoints(layout):
    c = lab_topology(LabSpec(layout=layout)).cluster
    worker, master = c.workers[0], c.masters[0]
    assert node_client_endpoint(c, worker) == "https://127.0.0.1:6443"
    assert host_services(c, worker) == ("nginx", "kubelet")
    if layout is Layout.KUBEADM:
        assert host_services(c, master) == ("haproxy", "kubelet")
        assert node_client_endpoint(c, master) == c.endpoint
    else:
        assert host_services(c, master)[:4] == ("etcd", "kube-apiserver", "kube-controller-manager",
                                                "kube-scheduler")
        assert node_client_endpoint(c, master) == "https://127.0.0.1:6443"


@pytest.mark.parametrize("spec, message", [
    (LabSpec(masters=0), "--masters"),
    (LabSpec(workers=10), "--workers"),
    (LabSpec(subnet=IPv4Network("10.212.0.0/28")), "too small"),
    (LabSpec(subnet=IPv4Network("8.8.8.0/24")), "not a private range"),
])
def test_bad_lab_specs_are_refused_with_one_line(spec, message):
    with pytest.raises(InputError, match=message):
        lab_topology(spec)


def test_light_hosts_fill_the_subnet_from_2_and_have_no_cluster():
    topology = light_topology(253, IPv4Network("10.212.9.0/24"))
    assert topology.cluster.hosts == () and len(topology.hosts) == 253
    assert (topology.hosts[0].name, topology.hosts[0].address) == ("host1", IPv4Address("10.212.9.2"))
    assert topology.hosts[-1].address == IPv4Address("10.212.9.254")
    assert all(not h.roles for h in topology.hosts)
    for count in (0, 254):
        with pytest.raises(InputError, match="1 to 253"):
            light_topology(count, IPv4Network("10.212.9.0/24"))


def test_roles():
    c = lab_topology(LabSpec(workers=1)).cluster
    assert all(h.has(Role.ETCD) for h in c.masters)
    assert c.lb_hosts == c.masters


@pytest.mark.parametrize("layout", list(Layout))
def test_a_lab_without_lb_has_no_vip_and_clients_use_the_first_master(layout):
    c = lab_topology(LabSpec(layout=layout, with_lb=False)).cluster
    assert c.vip is None and c.endpoint == "https://10.212.0.11:6443"
    for host in c.hosts:
        assert not {"haproxy", "nginx"} & set(host_services(c, host))
        assert node_client_endpoint(c, host) == c.endpoint
