"""The pure parsers discover uses: what kubeha renders parses back to the cluster it came
from, and hand-written configs (kubeasz units, keepalived with `!` comments, haproxy
`listen` sections) parse too."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import PurePosixPath

import pytest
from helpers.render_clusters import cluster  # noqa: F401  (fixture)

from kubeha.discover.configs import (
    kubelet_cluster_domain, manifest_command, parse_blocks, parse_flags, parse_haproxy_cfg,
    parse_keepalived_conf, parse_node_proxy_conf, unit_exec_start,
)
from kubeha.discover.discover import component_command, etcd_endpoints, paths_from_flags
from kubeha.errors import InputError
from kubeha.model import Cluster, LoadBalancer, VirtualIP
from kubeha.render import (
    apiserver_flags, etcd_flags, render_apiserver, render_etcd, render_haproxy_cfg,
    render_keepalived_conf, render_kubelet_config, render_node_proxy_conf,
)
from kubeha.render.ha import Backend


def test_parse_flags_takes_both_forms_and_bare_switches():
    assert parse_flags(["kube-apiserver", "--a=1", "--b", "two", "--c", "--d=x=y", "-v", "--e"]) == {
        "a": "1", "b": "two", "c": "true", "d": "x=y", "e": "true"}


def test_rendered_control_plane_parses_back_to_its_flags(cluster: Cluster):
    master = cluster.masters[0]
    for rendered, flags in ((render_apiserver(cluster, master), apiserver_flags(cluster, master)),
                            (render_etcd(cluster, master), etcd_flags(cluster, master))):
        argv = component_command(cluster.layout, rendered.content, str(rendered.path))
        assert parse_flags(argv[1:]) == flags


def test_rendered_flags_give_back_the_layout_paths(cluster: Cluster):
    master = cluster.masters[0]
    flags = {"kube-apiserver": apiserver_flags(cluster, master), "etcd": etcd_flags(cluster, master)}
    assert paths_from_flags(cluster.layout, flags) == cluster.paths


def test_flags_that_move_files_move_the_paths(cluster: Cluster):
    flags = {"kube-apiserver": {"client-ca-file": "/srv/pki/ca.crt", "etcd-certfile": "/srv/e.crt",
                                "etcd-keyfile": "/srv/e.key"}}
    paths = paths_from_flags(cluster.layout, flags)
    assert paths.ca.cert == PurePosixPath("/srv/pki/ca.crt") and paths.ca.key == cluster.paths.ca.key
    assert paths.apiserver_etcd_client.cert == PurePosixPath("/srv/e.crt")
    assert paths.apiserver == cluster.paths.apiserver


def test_kubeasz_unit_with_continuations_comments_and_a_reset():
    unit = """\
[Unit]
Description=Kubernetes API Server
ExecStart=/not/this
[Service]
ExecStart=
ExecStart=-/opt/kube/bin/kube-apiserver \\
  --advertise-address=192.168.1.1 \\
  --etcd-servers=https://192.168.1.1:2379,https://192.168.1.2:2379 \\
  --service-cluster-ip-range 10.68.0.0/16 \\
  --v=2
Restart=always
"""
    argv = unit_exec_start(unit)
    assert argv[0] == "/opt/kube/bin/kube-apiserver"
    assert parse_flags(argv[1:]) == {
        "advertise-address": "192.168.1.1", "service-cluster-ip-range": "10.68.0.0/16", "v": "2",
        "etcd-servers": "https://192.168.1.1:2379,https://192.168.1.2:2379"}


def test_unit_without_exec_start_and_broken_manifest_are_one_line_errors():
    with pytest.raises(InputError, match="no ExecStart"):
        unit_exec_start("[Service]\nRestart=always\n", "u.service")
    with pytest.raises(InputError, match="not a static pod"):
        manifest_command("kind: Pod\nspec: {}\n", "m.yaml")


def test_manifest_command_joins_command_and_args():
    text = "spec:\n  containers:\n  - command: [etcd]\n    args: ['--name=m1', '--data-dir', '/d']\n"
    assert parse_flags(manifest_command(text)[1:]) == {"name": "m1", "data-dir": "/d"}


def test_etcd_endpoints_put_the_seed_for_loopback():
    flags = {"etcd-servers": "https://127.0.0.1:2379,https://10.0.0.12:2379"}
    assert etcd_endpoints(flags, IPv4Address("10.0.0.11")) == (
        "https://10.0.0.11:2379", "https://10.0.0.12:2379")


def test_rendered_keepalived_parses_back(cluster: Cluster):
    lb = cluster.lb_hosts[0]
    multi = cluster.model_copy(update={
        "vip": VirtualIP(address="10.77.0.100", interface="ens3", vrid=77),
        "extra_vips": (VirtualIP(address="10.77.0.101", interface="ens3", vrid=77),),
        "load_balancer": LoadBalancer(keepalived_unicast=True)})
    (instance,) = parse_keepalived_conf(render_keepalived_conf(multi, lb, 150))
    assert instance.interface == "ens3" and instance.vrid == 77
    assert instance.addresses == ((IPv4Address("10.77.0.100"), "ens3"), (IPv4Address("10.77.0.101"), "ens3"))
    assert instance.unicast is (len(cluster.lb_hosts) > 1)


def test_hand_written_keepalived_with_bang_comments():
    conf = """\
! Configuration File for keepalived
global_defs { router_id LVS_1 }
vrrp_instance VI-kube_master {
    state MASTER
    interface eth1   # the LAN
    virtual_router_id 111
    priority 120
    virtual_ipaddress {
        192.168.1.250
    }
}
"""
    (instance,) = parse_keepalived_conf(conf)
    assert instance == type(instance)(interface="eth1", vrid=111, unicast=False,
                                      addresses=((IPv4Address("192.168.1.250"), None),))


def test_rendered_haproxy_parses_back(cluster: Cluster):
    tuned = cluster.model_copy(update={"load_balancer": LoadBalancer(
        haproxy_check_interval_ms=2000, haproxy_check_fall=5, haproxy_check_rise=1)})
    config = parse_haproxy_cfg(render_haproxy_cfg(tuned))
    assert config.ports == (8443,)
    assert config.servers == tuple(Backend(m.name, str(m.address), 6443) for m in cluster.masters)
    assert config.check == {"interval_ms": 2000, "fall": 5, "rise": 1}


def test_haproxy_listen_section_and_stats_frontend():
    cfg = """\
global
    log /dev/log local1 warning
frontend stats
    bind *:9000
    mode http
listen kube_master
    bind 0.0.0.0:8443
    mode tcp
    balance roundrobin
    server 192.168.1.1 192.168.1.1:6443 check inter 5s fall 2 rise 2 weight 1
    server 192.168.1.2 192.168.1.2:6443 check inter 5s fall 2 rise 2 weight 1
"""
    config = parse_haproxy_cfg(cfg)
    assert config.ports == (8443,)
    assert [s.address for s in config.servers] == ["192.168.1.1", "192.168.1.2"]
    assert config.check == {"interval_ms": 5000, "fall": 2, "rise": 2}


def test_rendered_node_proxy_parses_back(cluster: Cluster):
    config = parse_node_proxy_conf(render_node_proxy_conf(cluster))
    assert config is not None and config.listen_port == cluster.node_local_port
    assert [(s.address, s.port) for s in config.servers] == [(str(m.address), 6443) for m in cluster.masters]


def test_nginx_without_a_stream_proxy_is_none():
    assert parse_node_proxy_conf("events {}\nhttp { server { listen 80; } }\n") is None


def test_parse_blocks_keeps_quoted_words_together():
    (script,) = parse_blocks('vrrp_script chk { script "/bin/curl -k https://x:1/#a" }',
                             comments="#!", statements_end_lines=True)
    assert script.children[0].words == ["script", "/bin/curl -k https://x:1/#a"]


def test_kubelet_cluster_domain(cluster: Cluster):
    assert kubelet_cluster_domain(render_kubelet_config(cluster, cluster.masters[0]).content) == "cluster.local"
    assert kubelet_cluster_domain("clusterDomain: corp.example.\n") == "corp.example"
    assert kubelet_cluster_domain(": bad yaml: [") is None
