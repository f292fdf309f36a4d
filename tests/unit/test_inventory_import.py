from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_inventory import mutated

from kubeha.errors import InputError
from kubeha.inventory import dump_inventory, import_kubeasz, import_kubespray, parse_inventory
from kubeha.model import EtcdTopology, Layout, Role

# kubeasz 3.x, after example/hosts.multi-node, with an external LB pair and custom SSH.
KUBEASZ_3 = """\
# 'etcd' cluster should have odd member(s) (1,3,5,...)
[etcd]
192.168.1.1
192.168.1.2
192.168.1.3

# master node(s), set unique 'k8s_nodename' for each node
# CAUTION: 'k8s_nodename' must consist of lower case alphanumeric characters, '-' or '.',
# and must start and end with an alphanumeric character
[kube_master]
192.168.1.1 k8s_nodename='master-01'
192.168.1.2 k8s_nodename='master-02'
192.168.1.3 k8s_nodename='master-03' ansible_ssh_port=2222

# work node(s), set unique 'k8s_nodename' for each node
[kube_node]
192.168.1.4 k8s_nodename='worker-01'
192.168.1.5 k8s_nodename='Worker.02'
192.168.1.9

# [optional] harbor server, a private docker registry
# 'NEW_INSTALL': 'true' to install a harbor server; 'false' to integrate with existed one
[harbor]
#192.168.1.8 NEW_INSTALL=false

# [optional] loadbalance for accessing k8s from outside
[ex_lb]
192.168.1.6 LB_ROLE=backup EX_APISERVER_VIP=192.168.1.250 EX_APISERVER_PORT=8443
192.168.1.7 LB_ROLE=master EX_APISERVER_VIP=192.168.1.250 EX_APISERVER_PORT=8443

# [optional] ntp server for the cluster
[chrony]
#192.168.1.1

[all:vars]
# --------- Main Variables ---------------
# Secure port for apiservers
SECURE_PORT="6443"

# Cluster container-runtime supported: docker, containerd
# if k8s version >= 1.24, docker is not supported
CONTAINER_RUNTIME="containerd"

# Network plugins supported: calico, flannel, kube-router, cilium, kube-ovn
CLUSTER_NETWORK="calico"

# Service proxy mode of kube-proxy: 'iptables' or 'ipvs'
PROXY_MODE="ipvs"

# K8S Service CIDR, not overlap with node(host) networking
SERVICE_CIDR="10.68.0.0/16"

# Cluster CIDR (Pod CIDR), not overlap with node(host) networking
CLUSTER_CIDR="172.20.0.0/16"

# NodePort Range
NODE_PORT_RANGE="30000-32767"

# Cluster DNS Domain
CLUSTER_DNS_DOMAIN="cluster.local"

# -------- Additional Variables (don't change the default value right now) ---
# Binaries Directory
bin_dir="/opt/kube/bin"

# Deploy Directory (kubeasz workspace)
base_dir="/etc/kubeasz"

# Directory for a specific cluster
cluster_dir="{{ base_dir }}/clusters/k8s-01"

# CA and other components cert/key Directory
ca_dir="/etc/kubernetes/ssl"

# Default 'k8s_nodename' is empty
k8s_nodename=''

# Default python interpreter
ansible_python_interpreter=/usr/bin/python3
ansible_ssh_user=ops
"""

# kubeasz 1.x, as in the runbook that changes the master VIP (000).
KUBEASZ_1 = """\
# 部署节点：运行ansible 脚本的节点
[deploy]
192.168.1.41

# etcd集群请提供如下NODE_NAME，请注意etcd集群必须是1,3,5,7...奇数个节点
[etcd]
192.168.1.41 NODE_NAME=etcd1
192.168.1.42 NODE_NAME=etcd2
192.168.1.43 NODE_NAME=etcd3

[kube-master]
192.168.1.41
192.168.1.42

# 负载均衡至少两个节点，安装 haproxy+keepalived
[lb]
192.168.1.41 LB_IF="ens3" LB_ROLE=backup
192.168.1.42 LB_IF="ens3" LB_ROLE=master

[kube-node]
192.168.1.43
192.168.1.44
192.168.1.45

[new-node]
#192.168.1.46 NEW_NODE=yes

[all:vars]
# ---------集群主要参数---------------
#集群部署模式：allinone, single-master, multi-master
DEPLOY_MODE=multi-master

# 集群 MASTER IP即 LB节点VIP地址，为区别与默认apiserver端口，设置VIP监听的服务端口8443
MASTER_IP="192.168.1.39"
KUBE_APISERVER="https://{{ MASTER_IP }}:8443"
LB_IF="ens3"

CLUSTER_NETWORK="calico"
SERVICE_CIDR="10.68.0.0/16"
CLUSTER_CIDR="172.20.0.0/16"
CLUSTER_KUBERNETES_SVC_IP="10.68.0.1"
CLUSTER_DNS_SVC_IP="10.68.0.2"
CLUSTER_DNS_DOMAIN="cluster.local."
bin_dir="/opt/kube/bin"
ca_dir="/etc/kubernetes/ssl"
base_dir="/etc/ansible"
"""

KUBESPRAY_INI = """\
# ## Configure 'ip' variable to bind kubernetes services on a
# ## different ip than the default iface
# ## We should set etcd_member_name for etcd cluster. The node that is not a etcd member do not need to set the value, or can set the empty string value.
[all]
node1 ansible_host=95.54.0.12 ip=10.3.0.1 etcd_member_name=etcd1
node2 ansible_host=95.54.0.13 ip=10.3.0.2 etcd_member_name=etcd2
node3 ansible_host=95.54.0.14 ip=10.3.0.3 etcd_member_name=etcd3
node4 ansible_host=95.54.0.15 ip=10.3.0.4 ansible_port=2200
node5 ansible_host=95.54.0.16 ip=10.3.0.5
node6 ansible_host=95.54.0.17 ip=10.3.0.6  # a spare

# ## configure a bastion host if your nodes are not directly reachable
# [bastion]
# bastion ansible_host=x.x.x.x ansible_user=some_user

[kube_control_plane]
node1
node2
node3

[etcd]
node1
node2
node3

[kube_node]
node4
node5

[calico_rr]

[k8s_cluster:children]
kube_control_plane
kube_node
calico_rr

[all:vars]
ansible_user=ubuntu
ansible_become=true
"""

KUBESPRAY_YAML = """\
all:
  hosts:
    node1:
      ansible_host: 10.10.1.3
      ip: 10.10.1.3
      access_ip: 10.10.1.3
    node2:
      ansible_host: 10.10.1.4
      ip: 10.10.1.4
      access_ip: 10.10.1.4
    node3:
      ansible_host: 10.10.1.5
      ip: 10.10.1.5
      access_ip: 10.10.1.5
    etcd1:
      ansible_host: 10.10.1.6
  children:
    kube-master:
      hosts:
        node1:
        node2:
    etcd:
      hosts:
        etcd1:
    kube-node:
      hosts:
        node2:
        node3:
    k8s-cluster:
      children:
        kube-master:
        kube-node:
    calico_rr:
      hosts: {}
"""


def test_kubeasz_3_hosts_file():
    inventory = import_kubeasz(KUBEASZ_3)
    cluster = inventory.cluster
    assert cluster.name == "k8s-01" and cluster.layout is Layout.KUBEASZ
    assert cluster.etcd_topology is EtcdTopology.STACKED
    assert [h.name for h in cluster.hosts] == [
        "master-01", "master-02", "master-03", "worker-01", "worker-02", "192-168-1-9", "192-168-1-6",
        "192-168-1-7"]
    assert cluster.host("worker-02").kube_node_name == "Worker.02"
    assert cluster.host("192-168-1-9").kube_node_name == "192.168.1.9"
    assert cluster.host("master-01").roles == frozenset({Role.ETCD, Role.MASTER})
    assert [h.name for h in cluster.lb_hosts] == ["192-168-1-6", "192-168-1-7"]
    assert cluster.endpoint == "https://192.168.1.250:8443"
    assert cluster.node_local_proxy
    assert cluster.service_cidr == IPv4Network("10.68.0.0/16")
    assert cluster.paths.pki_dir == PurePosixPath("/etc/kubernetes/ssl")
    assert (cluster.host("master-03").ssh_port, cluster.host("master-03").ssh_user) == (2222, "ops")
    assert inventory.ssh.user == "ops"
    assert any("virtual_router_id or interface" in note for note in inventory.notes)
    assert parse_inventory(dump_inventory(inventory)).cluster == cluster


def test_kubeasz_1_hosts_file_of_the_vip_runbook():
    cluster = import_kubeasz(KUBEASZ_1).cluster
    assert cluster.endpoint == "https://192.168.1.39:8443"
    assert cluster.vip is not None and cluster.vip.interface == "ens3"
    assert not cluster.node_local_proxy  # 1.x clients use the VIP
    assert [h.name for h in cluster.masters] == ["192-168-1-41", "192-168-1-42"]
    assert cluster.etcd_topology is EtcdTopology.EXTERNAL  # etcd3 is a worker
    assert cluster.cluster_domain == "cluster.local"
    assert cluster.lb_hosts == cluster.masters
    assert cluster.name == "kubernetes"


def test_kubeasz_without_a_vip_and_with_a_moved_ca_dir():
    hosts = "[etcd]\n10.0.0.1\n[kube_master]\n10.0.0.1\n[kube_node]\n10.0.0.2\n[all:vars]\nca_dir=/srv/ssl\n"
    cluster = import_kubeasz(hosts).cluster
    assert cluster.vip is None and cluster.endpoint == "https://10.0.0.1:6443"
    assert cluster.paths.ca.cert == PurePosixPath("/srv/ssl/ca.pem")


def test_kubespray_ini_with_group_vars():
    group_vars = {
        "loadbalancer_apiserver": {"address": "10.3.0.100", "port": 8383},
        "apiserver_loadbalancer_domain_name": "lb.example.com",
        "kube_apiserver_port": 6443,
        "kube_version": "1.29.3",
        "kube_service_addresses": "10.233.0.0/18",
    }
    inventory = import_kubespray(KUBESPRAY_INI, group_vars=group_vars)
    cluster = inventory.cluster
    assert cluster.layout is Layout.KUBEADM and cluster.name == "cluster.local"
    assert [h.name for h in cluster.hosts] == ["node1", "node2", "node3", "node4", "node5"]
    assert cluster.host("node1").address == IPv4Address("10.3.0.1")
    assert cluster.endpoint == "https://10.3.0.100:8383"
    assert not cluster.node_local_proxy  # an external LB turns kubespray's localhost LB off
    assert cluster.kubernetes_version == "v1.29.3"
    assert cluster.paths.ca.cert == PurePosixPath("/etc/kubernetes/ssl/ca.crt")
    assert cluster.host("node4").ssh_port == 2200 and cluster.host("node4").ssh_user == "ubuntu"
    assert inventory.ssh.sudo
    notes = "\n".join(inventory.notes)
    assert "lb.example.com" in notes and "/etc/ssl/etcd/ssl" in notes and "does not run" in notes


def test_kubespray_yaml_with_old_group_names_and_external_etcd():
    inventory = import_kubespray(KUBESPRAY_YAML, source="hosts.yaml")
    cluster = inventory.cluster
    assert [h.name for h in cluster.masters] == ["node1", "node2"]
    assert [h.name for h in cluster.workers] == ["node2", "node3"]
    assert cluster.etcd_topology is EtcdTopology.EXTERNAL
    assert cluster.vip is None and cluster.node_local_proxy and cluster.node_local_port == 6443
    assert cluster.service_cidr == IPv4Network("10.233.0.0/18")
    assert inventory.warnings() == ()


@pytest.mark.parametrize("text, expected", [
    ("[etcd]\n10.0.0.1\n[kube_master]\n10.0.0.1\n10.0.0.300\n",
     "hosts:5: host 10.0.0.300: '10.0.0.300' is not an IPv4 address"),
    ("[etcd]\n10.0.0.1\n[kube_master\n", "hosts:3: '[kube_master' is not a [group], [group:vars] or "
     "[group:children] header"),
    ("[kube_master]\n10.0.0.1 k8s_nodename\n", "hosts:2: [kube_master] 10.0.0.1: 'k8s_nodename' is not "
     "a name=value variable"),
    ("[kube_master]\n10.0.0.[1:3]\n", "hosts:2: [kube_master] 10.0.0.[1:3]: host ranges are not "
     "supported: list the hosts one by one"),
    ("[etcd]\n10.0.0.1\n[kube_master]\n10.0.0.1\n[all:vars]\nSECURE_PORT=99999\n",
     "hosts:6: SECURE_PORT: '99999' is out of range: the most allowed is 65535"),
    ("[etcd]\n10.0.0.1\n[kube_master]\n10.0.0.1\n[all:vars]\nKUBE_APISERVER=\"ftp://x\"\n",
     "hosts:6: KUBE_APISERVER: 'ftp://x' is not an https://address:port URL"),
    ("[etcd]\n10.0.0.1\n[kube_master]\n10.0.0.1\n[ex_lb]\n10.0.0.5 EX_APISERVER_VIP=10.0.0.9\n"
     "10.0.0.6 EX_APISERVER_VIP=10.0.0.8\n",
     "hosts:6: host 10.0.0.5: the ex_lb hosts disagree on EX_APISERVER_VIP (10.0.0.8, 10.0.0.9): "
     "they share one VIP"),
    ("[etcd]\n10.0.0.1\n[kube_node]\n10.0.0.2\n",
     "hosts: hosts: no host has the role master: a cluster needs at least one"),
])
def test_kubeasz_problems_name_the_line(text: str, expected: str):
    with pytest.raises(InputError) as e:
        import_kubeasz(text)
    assert str(e.value).splitlines() == [expected]


def test_kubespray_problems_name_the_line_or_the_group_vars():
    with pytest.raises(InputError) as e:
        import_kubespray(KUBESPRAY_INI.replace("ip=10.3.0.2 ", "ip=10.3.0.1 "),
                         group_vars={"loadbalancer_apiserver": {"address": "lb.example.com"}},
                         group_vars_source="group_vars/all/all.yml")
    assert str(e.value).splitlines() == [
        "group_vars/all/all.yml: loadbalancer_apiserver: 'lb.example.com' is not an IPv4 address",
    ]
    with pytest.raises(InputError) as e:
        import_kubespray(KUBESPRAY_INI.replace("ip=10.3.0.2 ", "ip=10.3.0.1 "))
    assert str(e.value).splitlines() == [
        "inventory.ini:6: host node2: 10.3.0.1 is also the address of hosts[0] (node1): each host needs its own",
    ]
    with pytest.raises(InputError, match=r"^hosts.yaml:3: group kube_node: expected a mapping"):
        import_kubespray("all:\n  children:\n    kube_node: [node1]\n", source="hosts.yaml")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.tuples(st.just(import_kubeasz), mutated(KUBEASZ_3)),
    st.tuples(st.just(import_kubeasz), mutated(KUBEASZ_1)),
    st.tuples(st.just(import_kubespray), mutated(KUBESPRAY_INI)),
    st.tuples(st.just(import_kubespray), mutated(KUBESPRAY_YAML)),
))
def test_mutated_ansible_inventories_give_an_inventory_or_an_input_error(case):
    importer, text = case
    try:
        inventory = importer(text)
    except InputError as e:
        assert str(e).strip()
    else:
        assert parse_inventory(dump_inventory(inventory)).cluster == inventory.cluster
