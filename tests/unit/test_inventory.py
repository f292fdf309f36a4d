from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kubeha.errors import InputError
from kubeha.inventory import Inventory, dump_inventory, load_inventory, parse_inventory
from kubeha.model import EtcdTopology, Layout, Role

# Line numbers matter: the tests below name them.
CLUSTER_YAML = """\
# prod cluster
name: prod
layout: kubeadm
network: 10.0.0.0/24
vip:
  address: 10.0.0.100
  port: 8443
  vrid: 60
extra_vips:
  - address: 10.0.0.101
load_balancer:
  keepalived_unicast: true
  node_local_proxy_port: 6444
ssh:
  user: ops
  key_file: keys/ops
  sudo: true
hosts:
  - name: m1
    address: 10.0.0.11
    roles: [master, etcd]
  - name: m2
    address: 10.0.0.12
    roles: [master, etcd]
    ssh: {port: 2222, user: root}
  - name: m3
    address: 10.0.0.13
    roles: [master, etcd]
  - name: w1
    address: 10.0.0.21
    roles: [worker]
    node_name: w1.example.com
"""


def edited(old: str, new: str) -> str:
    assert CLUSTER_YAML.count(old) == 1, old
    return CLUSTER_YAML.replace(old, new)


def refusal(text: str) -> list[str]:
    with pytest.raises(InputError) as e:
        parse_inventory(text)
    return str(e.value).splitlines()


def test_a_cluster_yaml_loads_with_defaults_and_per_host_ssh(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_YAML)
    inventory = load_inventory(path)
    cluster = inventory.cluster
    assert cluster.name == "prod" and cluster.layout is Layout.KUBEADM
    assert cluster.etcd_topology is EtcdTopology.STACKED
    assert cluster.endpoint == "https://10.0.0.100:8443"
    assert [v.address for v in cluster.vips] == [IPv4Address("10.0.0.100"), IPv4Address("10.0.0.101")]
    assert cluster.vip is not None and cluster.vip.vrid == 60 and cluster.vip.interface == "eth0"
    assert cluster.network == IPv4Network("10.0.0.0/24")
    assert cluster.load_balancer.keepalived_unicast
    assert cluster.node_local_endpoint == "https://127.0.0.1:6444"
    assert cluster.paths.pki_dir == PurePosixPath("/etc/kubernetes/pki")
    m1, m2 = cluster.host("m1"), cluster.host("m2")
    assert m1.roles == frozenset({Role.MASTER, Role.ETCD})
    assert (m1.ssh_user, m1.ssh_port, m1.ssh_key) == ("ops", 22, tmp_path / "keys/ops")
    assert (m2.ssh_user, m2.ssh_port, m2.ssh_key) == ("root", 2222, tmp_path / "keys/ops")
    assert cluster.host("w1").kube_node_name == "w1.example.com"
    assert inventory.ssh.sudo and inventory.ssh.key_file == tmp_path / "keys/ops"
    assert inventory.warnings() == ()


def test_dump_round_trips_and_is_stable(tmp_path: Path):
    inventory = parse_inventory(CLUSTER_YAML, base_dir=tmp_path)
    text = dump_inventory(inventory)
    assert text.startswith("# kubeha inventory")
    assert parse_inventory(text) == inventory
    assert dump_inventory(parse_inventory(text)) == text
    assert "    roles: [etcd, master]\n" in text
    assert "paths" not in text  # nothing overridden, nothing written
    assert list(_top_level_keys(text)) == [
        "name", "layout", "etcd_topology", "kubernetes_version", "network", "apiserver_port",
        "service_cidr", "cluster_domain", "vip", "extra_vips", "load_balancer", "ssh", "hosts"]


def _top_level_keys(text: str):
    for line in text.splitlines():
        if line and line[0] not in "# -":
            yield line.split(":")[0]


def test_the_documented_example_loads():
    doc = (Path(__file__).parents[2] / "docs/inventory.md").read_text()
    example = doc.split("## Example\n\n```yaml\n")[1].split("```")[0]
    inventory = parse_inventory(example, "inventory.md")
    assert inventory.cluster.paths.ca.cert == PurePosixPath("/srv/kubernetes/pki/ca.crt")
    assert inventory.cluster.host("master2").ssh_port == 2222


def test_a_moved_pki_dir_moves_its_files_and_dumps_as_one_override():
    text = edited("hosts:\n", "paths:\n  pki_dir: /srv/pki\n  admin_kubeconfig: /root/admin.conf\nhosts:\n")
    inventory = parse_inventory(text)
    paths = inventory.cluster.paths
    assert paths.ca.cert == PurePosixPath("/srv/pki/ca.crt")
    assert paths.etcd_peer.key == PurePosixPath("/srv/pki/etcd/peer.key")
    assert paths.etcd_pki_dir == PurePosixPath("/srv/pki/etcd")
    assert paths.admin_kubeconfig == PurePosixPath("/root/admin.conf")
    dumped = dump_inventory(inventory)
    assert "paths:\n  pki_dir: /srv/pki\n  admin_kubeconfig: /root/admin.conf\n" in dumped
    assert parse_inventory(dumped) == inventory


def test_a_moved_etcd_pki_dir_moves_only_the_etcd_certificates():
    text = edited("layout: kubeadm", "layout: kubeasz") + "paths:\n  etcd_pki_dir: /etc/etcd/ssl\n"
    paths = parse_inventory(text).cluster.paths
    assert paths.etcd_server.cert == PurePosixPath("/etc/etcd/ssl/etcd.pem")
    assert paths.ca.cert == PurePosixPath("/etc/kubernetes/ssl/ca.pem")


@pytest.mark.parametrize("old, new, expected", [
    ("address: 10.0.0.12", "address: 10.0.0.300",
     "cluster.yaml:23: hosts[1].address: '10.0.0.300' is not an IPv4 address"),
    ("roles: [worker]", "roles: [worker, boss]",
     "cluster.yaml:31: hosts[3].roles[1]: 'boss' is not one of 'etcd', 'master', 'worker' or 'lb'"),
    ("  vrid: 60", "  vrid: 256", "cluster.yaml:8: vip.vrid: 256 is out of range: the most allowed is 255"),
    ("  vrid: 60", "  vrid: 0", "cluster.yaml:8: vip.vrid: 0 is out of range: the least allowed is 1"),
    ("  port: 8443", "  port: 70000", "cluster.yaml:7: vip.port: 70000 is out of range: the most allowed is 65535"),
    ("  port: 8443", "  port: eight", "cluster.yaml:7: vip.port: 'eight' is not a whole number"),
    ("  sudo: true", "  sudo: maybe", "cluster.yaml:17: ssh.sudo: 'maybe' is not true or false"),
    ("  - name: m3\n", "  - name: M3\n", "cluster.yaml:26: hosts[2].name: 'M3' is not a host name: "
     "lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit"),
    ("  - name: m3\n    address: 10.0.0.13\n", "  - name: m3\n",
     "cluster.yaml:26: hosts[2].address: is required"),
    ("network: 10.0.0.0/24", "network: 10.0.0.1/24",
     "cluster.yaml:4: network: '10.0.0.1/24' is not an IPv4 network like 10.0.0.0/24 (no host bits set)"),
    ("layout: kubeadm", "layout: k3s", "cluster.yaml:3: layout: 'k3s' is not one of 'kubeadm' or 'kubeasz'"),
    ("  keepalived_unicast: true", "  keepalived_unicast: true\n  colour: red",
     "cluster.yaml:13: load_balancer.colour: is not a known field (expected one of: keepalived_unicast, "
     "haproxy_check_interval_ms, haproxy_check_fall, haproxy_check_rise, node_local_proxy_port, "
     "node_local_proxy)"),
    ("name: prod", "name: prod\nhostz: []", "cluster.yaml:3: hostz: is not a known field (expected one "
     "of: name, layout, etcd_topology, kubernetes_version, network, apiserver_port, service_cidr, "
     "cluster_domain, vip, extra_vips, load_balancer, paths, ssh, hosts)"),
    ("hosts:\n", "paths:\n  pki_dir: etc/pki\nhosts:\n",
     "cluster.yaml:19: paths.pki_dir: 'etc/pki' is not an absolute path"),
    ("vip:\n  address: 10.0.0.100\n  port: 8443\n  vrid: 60\n", "vip: 10.0.0.100\n",
     "cluster.yaml:5: vip: '10.0.0.100' is not a mapping"),
])
def test_each_bad_field_is_one_line_with_its_line(old: str, new: str, expected: str):
    assert refusal(edited(old, new)) == [expected]


@pytest.mark.parametrize("old, new, expected", [
    ("  - name: m3\n", "  - name: m2\n",
     "cluster.yaml:26: hosts[2].name: m2 is also the name of hosts[1] (10.0.0.12): each host needs its own"),
    ("address: 10.0.0.13", "address: 10.0.0.12",
     "cluster.yaml:27: hosts[2].address: 10.0.0.12 is also the address of hosts[1] (m2): each host needs its own"),
    ("  address: 10.0.0.100", "  address: 10.0.0.11",
     "cluster.yaml:6: vip.address: 10.0.0.11 is the address of host m1: a VIP needs a free address"),
    ("  - address: 10.0.0.101", "  - address: 10.0.0.100",
     "cluster.yaml:10: extra_vips[0].address: 10.0.0.100 is already a VIP of this cluster"),
    ("  address: 10.0.0.100", "  address: 10.0.1.100",
     "cluster.yaml:6: vip.address: 10.0.1.100 is outside the network 10.0.0.0/24"),
    ("address: 10.0.0.21", "address: 10.0.0.255",
     "cluster.yaml:30: hosts[3].address: 10.0.0.255 is the network or broadcast address of 10.0.0.0/24"),
    ("roles: [worker]", "roles: [worker, lb]",
     "cluster.yaml:31: hosts[3].roles: w1 is a worker and an lb host: workloads share it and drains "
     "move the VIP; give lb to dedicated hosts or to masters"),
    ("roles: [worker]", "roles: [etcd]",
     "cluster.yaml:31: hosts[3].roles: w1 runs etcd but is not a master: stacked etcd runs on the "
     "masters (set etcd_topology: external for etcd on hosts of its own)"),
    ("layout: kubeadm", "layout: kubeadm\nservice_cidr: 10.0.0.0/16",
     "cluster.yaml:4: service_cidr: 10.0.0.0/16 overlaps the hosts' network 10.0.0.0/24"),
    ("  port: 8443", "  port: 6443", "cluster.yaml:7: vip.port: 6443 is the apiserver port, and "
     "haproxy runs on the masters beside the apiserver: choose another port (8443)"),
])
def test_each_inconsistency_is_one_line_with_its_line(old: str, new: str, expected: str):
    assert refusal(edited(old, new)) == [expected]


def test_every_problem_is_listed_at_once():
    text = edited("address: 10.0.0.12", "address: 10.0.0.300").replace("vrid: 60", "vrid: 999")
    text = text.replace("roles: [worker]", "roles: [wrker]")
    assert [line.split(": ")[1] for line in refusal(text)] == ["vip.vrid", "hosts[1].address",
                                                               "hosts[3].roles[0]"]
    no_master = "\n".join(line for line in CLUSTER_YAML.splitlines() if "extra_vips" not in line
                          and "10.0.0.101" not in line).replace("[master, etcd]", "[etcd]")
    no_master = no_master.replace("network: 10.0.0.0/24", "network: 10.0.0.0/24\netcd_topology: external")
    assert refusal(no_master) == ["cluster.yaml:17: hosts: no host has the role master: a cluster needs at least one"]


def test_vip_less_clusters_and_lb_roles():
    text = edited("vip:\n  address: 10.0.0.100\n  port: 8443\n  vrid: 60\nextra_vips:\n  - address: 10.0.0.101\n",
                  "").replace("roles: [master, etcd]\n    ssh", "roles: [master, etcd, lb]\n    ssh")
    assert refusal(text) == ["cluster.yaml:18: hosts[1].roles: m2 has the role lb but there is no vip to hold"]
    without_lb = text.replace("[master, etcd, lb]", "[master, etcd]")
    assert parse_inventory(without_lb).cluster.endpoint == "https://10.0.0.11:6443"


@pytest.mark.parametrize("text, expected", [
    ("", "cluster.yaml:1: expected a mapping with at least `hosts`, found nothing"),
    ("- a\n- b\n", "cluster.yaml:1: expected a mapping with at least `hosts`, found a list"),
    ("name: [unclosed\n", "cluster.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("name: a\nname: b\nhosts: []\n", "cluster.yaml:2: not valid YAML: found duplicate key \"name\" with value \"b\" (original value: \"a\")"),
    ("name: a\n", "cluster.yaml:1: hosts: is required"),
])
def test_files_that_are_not_a_cluster_document(text: str, expected: str):
    assert refusal(text) == [expected]


def test_an_unreadable_file_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="cannot read the inventory"):
        load_inventory(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="cannot read the inventory"):
        load_inventory(tmp_path / "bin.yaml")


def test_an_even_etcd_is_legal_with_a_warning():
    text = edited("roles: [worker]", "roles: [worker]\n  - name: m4\n    address: 10.0.0.14\n    roles: [master, etcd]")
    inventory = parse_inventory(text)
    assert len(inventory.cluster.etcd_members) == 4
    assert inventory.warnings() == ("etcd has 4 members: an even count tolerates no more failures than 3 "
                                    "and needs a larger quorum (3); use an odd count",)


# --- property: whatever is done to a valid file, the answer is an Inventory or one InputError

_GARBAGE = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["{", "]", ": :", "- - -", "&a [*a]", "!!python/object:os.system x", "\t", "\x00",
                     "1e400", "-1", "9" * 5000, "0x10", "ünïcødé: ☃", "null", "~", "[]", "{}", "true",
                     "'", '"', "*undefined", "? complex\n: key", "<<: *x", "%YAML 1.1"]),
)


@st.composite
def mutated(draw, text: str) -> str:
    """``text`` with a few lines deleted, replaced, inserted or re-indented, or values replaced."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "value", "line", "insert", "indent"]))
        if action == "delete":
            del lines[i]
        elif action == "value" and ":" in lines[i]:
            key = lines[i].split(":")[0]
            lines[i] = f"{key}: {draw(_GARBAGE)}"
        elif action == "value" and "=" in lines[i]:
            key = lines[i].split("=")[0]
            lines[i] = f"{key}={draw(_GARBAGE)}"
        elif action == "line":
            lines[i] = draw(_GARBAGE)
        elif action == "insert":
            lines.insert(i, draw(_GARBAGE))
        else:
            lines[i] = " " * draw(st.integers(0, 6)) + lines[i].lstrip()
        if not lines:
            break
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(CLUSTER_YAML))
@example("hosts:\n  - name: m3\n?\n  - name: w1\n")  # a list as a mapping key (found by hypothesis)
def test_mutated_files_give_an_inventory_or_an_input_error(text: str):
    try:
        inventory = parse_inventory(text)
    except InputError as e:
        lines = str(e).splitlines()
        assert lines and all(line.startswith("cluster.yaml") for line in lines)
    else:
        assert isinstance(inventory, Inventory)
        assert parse_inventory(dump_inventory(inventory)) == inventory


def test_a_host_without_roles_is_a_spare():
    text = ("hosts:\n  - name: m1\n    address: 10.0.0.11\n    roles: [etcd, master]\n"
            "  - name: spare1\n    address: 10.0.0.21\n    roles: []\n")
    cluster = parse_inventory(text).cluster
    assert [h.name for h in cluster.hosts] == ["m1", "spare1"]
    assert cluster.host("spare1").roles == frozenset()
