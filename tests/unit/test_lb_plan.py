"""`kubeha lb apply` planning: which files change where, and which service actions follow."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from helpers.render_clusters import make_cluster

from kubeha.errors import InputError
from kubeha.lb import HAPROXY, KEEPALIVED, NGINX, Action, keepalived_priority, lb_configs, plan_lb_apply
from kubeha.lb.plan import complaint, install_hint, node_proxy_hosts
from kubeha.model import Cluster, Host, Layout, Role


def _on_hosts(cluster: Cluster) -> dict[tuple[str, PurePosixPath], bytes]:
    """What a host holds after a successful apply of ``cluster``."""
    return {(c.host.name, c.path): c.content for c in lb_configs(cluster)}


def _summary(plan) -> list[tuple[str, str, bool, Action]]:
    return [(s.host, s.unit, s.changed, s.action) for s in plan.pending]


def test_a_fresh_cluster_gets_every_file_and_every_service_started_in_order():
    cluster = make_cluster(3, Layout.KUBEADM)
    plan = plan_lb_apply(cluster, {})
    assert _summary(plan) == (
        [(m, "haproxy", True, Action.START) for m in ("m1", "m2", "m3")]
        + [(m, "keepalived", True, Action.START) for m in ("m1", "m2", "m3")]
        + [("w1", "nginx", True, Action.START)])
    assert plan.by_host()["w1"][0].config.path == PurePosixPath("/etc/nginx/nginx.conf")


def test_an_applied_cluster_needs_nothing():
    cluster = make_cluster(3, Layout.KUBEADM)
    plan = plan_lb_apply(cluster, _on_hosts(cluster))
    assert plan.pending == ()
    assert all(s.describe().endswith("unchanged, " + f"{s.unit} keeps running") for s in plan.steps)


def test_changed_backends_write_and_reload_haproxy_and_nginx_only():
    before = make_cluster(3, Layout.KUBEADM)
    # master m3 leaves: the LB hosts and the backends lose it; keepalived (multicast) keeps its config
    after = before.model_copy(update={"hosts": tuple(h for h in before.hosts if h.name != "m3")})
    plan = plan_lb_apply(after, _on_hosts(before))
    assert _summary(plan) == [("m1", "haproxy", True, Action.RELOAD), ("m2", "haproxy", True, Action.RELOAD),
                              ("w1", "nginx", True, Action.RELOAD)]
    assert b"m3" not in plan.pending[0].config.content


def test_a_stopped_service_with_a_current_config_is_started_without_a_write():
    cluster = make_cluster(1, Layout.KUBEADM)
    running = {("m1", "haproxy"), ("m1", "keepalived")}
    plan = plan_lb_apply(cluster, _on_hosts(cluster), running)
    assert _summary(plan) == [("w1", "nginx", False, Action.START)]
    assert plan.pending[0].describe() == "/etc/nginx/nginx.conf unchanged, start nginx"


def test_a_service_whose_config_a_killed_run_wrote_is_reloaded_without_a_write():
    cluster = make_cluster(1, Layout.KUBEADM)
    running = {("m1", "haproxy"), ("m1", "keepalived"), ("w1", "nginx")}
    plan = plan_lb_apply(cluster, _on_hosts(cluster), running, stale={("m1", "keepalived")})
    assert _summary(plan) == [("m1", "keepalived", False, Action.RELOAD)]


def test_dedicated_lb_hosts_run_haproxy_and_keepalived_by_priority():
    cluster = make_cluster(3, Layout.KUBEADM)
    lbs = (Host(name="lb1", address="10.77.0.41", roles={Role.LB}),
           Host(name="lb2", address="10.77.0.42", roles={Role.LB}))
    cluster = cluster.model_copy(update={"hosts": cluster.hosts + lbs})
    steps = plan_lb_apply(cluster, {}).steps
    assert [(s.host, s.unit) for s in steps if s.config.service is not NGINX] == [
        ("lb1", "haproxy"), ("lb2", "haproxy"), ("lb1", "keepalived"), ("lb2", "keepalived")]
    assert [keepalived_priority(cluster, h) for h in lbs] == [150, 140]
    assert b"priority 140" in steps[3].config.content


def test_node_local_proxies_run_on_workers_and_on_kubeasz_masters():
    assert [h.name for h in node_proxy_hosts(make_cluster(3, Layout.KUBEADM))] == ["w1"]
    assert [h.name for h in node_proxy_hosts(make_cluster(3, Layout.KUBEASZ))] == ["m1", "m2", "m3", "w1"]
    no_proxy = make_cluster(3, Layout.KUBEADM).model_copy(update={"node_local_proxy": False})
    assert {s.config.service for s in plan_lb_apply(no_proxy, {}).steps} == {HAPROXY, KEEPALIVED}


def test_a_cluster_without_a_vip_is_refused():
    cluster = make_cluster(3, Layout.KUBEADM).model_copy(update={"vip": None})
    with pytest.raises(InputError, match="no VIP: set vip"):
        plan_lb_apply(cluster, {})



def test_missing_packages_are_one_line_with_the_apt_command():
    line = install_hint({"m1": ["keepalived", "haproxy"], "m2": ["haproxy", "keepalived"], "w1": ["nginx"]})
    assert line == ("m1, m2 lack haproxy keepalived: run `apt-get install -y haproxy keepalived` there; "
                    "w1 lack nginx: run `apt-get install -y nginx` there")


def test_a_complaint_is_the_line_saying_what_is_wrong():
    haproxy = ("[NOTICE]   (21614) : haproxy version is 2.6.12-1+deb12u4\n"
               "[ALERT]    (21614) : config : parsing [/etc/haproxy/haproxy.cfg:1]: unknown keyword 'garbage'\n"
               "[ALERT]    (21614) : config : Fatal errors found in configuration.\n")
    assert complaint(haproxy) == (
        "[ALERT] (21614) : config : parsing [/etc/haproxy/haproxy.cfg:1]: unknown keyword 'garbage'")
    assert complaint("starting\nstopped\n") == "stopped"
    assert complaint("") == "no output"
