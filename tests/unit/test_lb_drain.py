"""Taking an apiserver out of the load balancers, the pure part: haproxy's `show stat`, the
node-local nginx.conf's `down` markers, refusing to leave a load balancer without a server;
and the runtime API script against a real haproxy in a private network namespace."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from helpers.render_clusters import cluster, make_cluster, run_in_namespaces  # noqa: F401

from kubeha.lb.apply import _SAVE_SERVER_STATE_SCRIPT
from kubeha.lb.drain import (
    _HAPROXY_API_SCRIPT, _SET_AND_WAIT_SCRIPT, BackendStates, HaproxyServer, NodeProxyServer, _new_confs,
    parse_node_proxy_rotation, parse_node_proxy_servers, parse_show_stat, refusal,
)
from kubeha.model import Cluster, Layout
from kubeha.render import render_node_proxy_conf

# haproxy 2.6's `show stat`, cut after the `weight` column (the parser reads columns by name)
SHOW_STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,
kube-apiserver,FRONTEND,,,0,0,9984,0,0,0,0,0,0,,,,,OPEN,,
kube-apiserver,master1,0,0,2,3,,7,0,0,,0,,0,0,0,0,DRAIN,1,
kube-apiserver,master2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,
kube-apiserver,master3,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,
kube-apiserver,master4,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/3,1,
kube-apiserver,master5,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT (via kube-apiserver/master1),1,
kube-apiserver,master6,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT(resolution),1,
kube-apiserver,BACKEND,0,0,2,3,999,7,0,0,0,0,,0,0,0,0,UP,2,
stats,FRONTEND,,,0,0,9984,0,0,0,0,0,0,,,,,OPEN,,

"""


def test_show_stat_gives_each_server_of_the_backend_its_status_and_sessions():
    servers = parse_show_stat(SHOW_STAT)
    assert servers == {
        "master1": HaproxyServer("DRAIN", 2),
        "master2": HaproxyServer("UP", 0),
        "master3": HaproxyServer("DOWN", 0),
        "master4": HaproxyServer("UP 1/3", 0),  # UP, one check failed since
        "master5": HaproxyServer("MAINT", 0),
        "master6": HaproxyServer("MAINT", 0),
    }
    assert parse_show_stat(SHOW_STAT, "other") == {}


def test_show_stat_without_a_header_is_an_error():
    with pytest.raises(ValueError, match="Unknown command"):
        parse_show_stat("Unknown command: 'show stats'\n")


def test_node_proxy_rotation_reads_the_down_markers_by_server_name(cluster: Cluster):
    names = [m.name for m in cluster.masters]
    assert parse_node_proxy_rotation(render_node_proxy_conf(cluster)) == dict.fromkeys(names, True)
    marked = parse_node_proxy_rotation(render_node_proxy_conf(cluster, down={names[0], "not-a-master"}))
    assert marked == {names[0]: False, **dict.fromkeys(names[1:], True)}


def test_down_adds_one_word_to_that_server_line_only():
    kubeasz = make_cluster(3, Layout.KUBEASZ)
    plain = render_node_proxy_conf(kubeasz)
    assert render_node_proxy_conf(kubeasz, down=()) == plain
    marked = render_node_proxy_conf(kubeasz, down=["m2"])
    changed = [(a, b) for a, b in zip(plain.splitlines(), marked.splitlines()) if a != b]
    assert changed == [("        server 10.77.0.12:6443 max_fails=1 fail_timeout=5s;  # m2",
                        "        server 10.77.0.12:6443 max_fails=1 fail_timeout=5s down;  # m2")]
    assert len(plain.splitlines()) == len(marked.splitlines())


def test_a_drain_keeps_the_servers_a_node_proxy_lists_not_the_inventorys_masters():
    # migrate-masters lists a new master (n1, out of rotation until it is ready) in every
    # node proxy before the inventory names it a master; draining m1 then must keep n1 listed
    kubeasz = make_cluster(3, Layout.KUBEASZ)
    listed = [(m.name, str(m.address), 6443) for m in kubeasz.masters] + [("n1", "10.77.0.21", 6443)]
    before = render_node_proxy_conf(kubeasz, listed).encode()
    assert parse_node_proxy_servers(before.decode())[-1] == NodeProxyServer("n1", "10.77.0.21", 6443, True)
    out = _new_confs(kubeasz, {"w1": before}, lambda down: down | {"m1"})["w1"]
    assert parse_node_proxy_rotation(out.decode()) == {"m1": False, "m2": True, "m3": True, "n1": True}
    assert _new_confs(kubeasz, {"w1": out}, lambda down: down - {"m1"}) == {"w1": before}


def test_a_conf_with_down_servers_passes_nginx_test(tmp_path: Path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_node_proxy_conf(make_cluster(3, Layout.KUBEADM), down=["m1", "m2"]))
    result = run_in_namespaces(
        "mount -t tmpfs tmpfs /run\nmount -t tmpfs tmpfs /var/log/nginx\n"
        f"nginx -t -c {conf} -g 'daemon on; master_process on;'")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr and "[warn]" not in result.stderr


# ---- the refusal ---------------------------------------------------------------------------

def _states(haproxy: dict[str, dict[str, str]], proxies: dict[str, dict[str, bool]] | None = None) -> BackendStates:
    return BackendStates(haproxy, proxies or {})


ALL_UP = {"master1": "UP", "master2": "UP", "master3": "UP"}
ALL_IN = {"master1": True, "master2": True, "master3": True}


def test_taking_one_of_three_serving_apiservers_out_is_allowed():
    states = _states({"lb1": ALL_UP, "lb2": ALL_UP}, {"worker1": ALL_IN})
    assert refusal(states, "master1") is None
    assert states.ready_servers("lb1") == {"master1", "master2", "master3"}
    assert states.in_everywhere("master1") and not states.out_everywhere("master1")


def test_the_last_up_server_of_an_haproxy_is_not_taken_out():
    states = _states({"lb1": {"master1": "UP", "master2": "MAINT", "master3": "DOWN"}, "lb2": ALL_UP})
    why = refusal(states, "master1")
    assert why == ("refusing to take master1 out of the load balancers: the haproxy on lb1 would have no "
                   "other UP apiserver (others: master2 MAINT, master3 DOWN); bring another apiserver back "
                   "first (nothing was changed)")
    assert refusal(states, "master3") is None  # DOWN already: master1 still serves


def test_load_balancers_left_alike_are_named_together():
    left = {"master1": "UP", "master2": "MAINT", "master3": "MAINT"}
    lonely = {"master1": True, "master2": False, "master3": False}
    states = _states({"lb1": left, "lb2": left, "lb3": {**left, "master3": "DOWN"}},
                     {"w1": lonely, "w2": lonely, "w3": ALL_IN})
    assert refusal(states, "master1") == (
        "refusing to take master1 out of the load balancers: the haproxy on lb1, lb2 would have no other UP "
        "apiserver (others: master2 MAINT, master3 MAINT); the haproxy on lb3 would have no other UP apiserver "
        "(others: master2 MAINT, master3 DOWN); the node-local proxy on w1, w2 would have no other apiserver "
        "in rotation; bring another apiserver back first (nothing was changed)")


def test_an_up_server_with_a_failed_check_still_counts_as_serving():
    states = _states({"lb1": {"master1": "UP", "master2": "UP 1/3", "master3": "MAINT"}})
    assert refusal(states, "master1") is None
    assert states.ready_servers("lb1") == {"master1", "master2"}
    assert not states.in_everywhere("master2")  # its checks are not all passing
    assert states.serving_everywhere("master2") and not states.serving_everywhere("master3")


def test_the_last_server_in_rotation_of_a_node_proxy_is_not_taken_out():
    states = _states({"lb1": ALL_UP}, {"worker1": ALL_IN, "worker2": {"master1": True, "master2": False,
                                                                        "master3": False}})
    why = refusal(states, "master1")
    assert why is not None and "the node-local proxy on worker2 would have no other apiserver in rotation" in why
    assert "worker1" not in why and "lb1" not in why


def test_taking_out_a_server_that_is_out_already_is_not_refused():
    out = {"master1": "MAINT", "master2": "DOWN", "master3": "DOWN"}
    states = _states({"lb1": out}, {"worker1": {"master1": False, "master2": True, "master3": True}})
    assert refusal(states, "master1") is None
    assert states.out_everywhere("master1") and not states.in_everywhere("master1")


def test_out_and_in_everywhere():
    states = _states({"lb1": {"master1": "MAINT"}, "lb2": {"master1": "DRAIN"}}, {"w1": {"master1": False}})
    assert states.out_everywhere("master1")
    assert not _states({"lb1": {"master1": "MAINT"}, "lb2": {"master1": "UP"}}).out_everywhere("master1")
    assert not _states({"lb1": {"master1": "MAINT"}}, {"w1": {"master1": True}}).out_everywhere("master1")
    assert _states({"lb1": {"master1": "UP"}}, {"w1": {"master1": True}}).in_everywhere("master1")
    assert not _states({"lb1": {"master1": "UP"}}, {"w1": {"master1": False}}).in_everywhere("master1")
    assert _states({}, {}).in_everywhere("master1")  # no load balancer at all


# ---- the runtime API script, against a real haproxy ----------------------------------------

HAPROXY_CFG = """\
global
    stats socket {socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
frontend kube-apiserver
    bind 127.0.0.1:18443
    default_backend kube-apiserver
backend kube-apiserver
    default-server check inter 100ms fall 3 rise 2
    server master1 127.0.0.1:16441
    server master2 127.0.0.1:16442
"""
LISTEN = ("import socket, time\nfor p in (16441, 16442):\n    s = socket.socket(); s.bind(('127.0.0.1', p));"
          " s.listen(); globals()[f's{p}'] = s\ntime.sleep(30)")


def test_the_runtime_api_scripts_drain_maintain_and_ready_a_server(tmp_path: Path):
    socket_path = tmp_path / "admin.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(socket=socket_path))

    def step(name: str, script: str, *args: str) -> str:
        return (f"echo '=== {name}'\n"
                f"sh -c {shlex.quote(script)} sh {socket_path} {shlex.join(args)} || echo \"exit $?\"\n")

    result = run_in_namespaces(
        "ip link set lo up\n"
        f"{shlex.join([sys.executable, '-c', LISTEN])} &\n"
        f"haproxy -f {cfg} -D -p {tmp_path / 'haproxy.pid'}\n"
        "sleep 1\n"  # rise 2 x inter 100 ms: both UP
        + step("show stat", _HAPROXY_API_SCRIPT, "show stat")
        + step("drain, no sessions left, maint", _SET_AND_WAIT_SCRIPT,
               "kube-apiserver", "master1", "drain", "sessions", "2000", "maint")
        + step("ready before any check", _HAPROXY_API_SCRIPT, "set server kube-apiserver/master2 state maint; "
               "set server kube-apiserver/master2 state ready; show stat")
        + step("ready until UP", _SET_AND_WAIT_SCRIPT, "kube-apiserver", "master1", "ready", "up", "5000", "-")
        + step("no such server", _SET_AND_WAIT_SCRIPT, "kube-apiserver", "nosuch", "drain", "sessions", "0", "-")
        + f"kill $(cat {tmp_path / 'haproxy.pid'}) $!\n", net=True)
    assert result.returncode == 0, result.stderr
    answers = {name: text for name, _, text in (part.partition("\n") for part in result.stdout.split("=== ")[1:])}

    def states(name: str) -> dict[str, str]:
        return {server: s.status for server, s in parse_show_stat(answers[name]).items()}

    assert states("show stat") == {"master1": "UP", "master2": "UP"}
    assert states("drain, no sessions left, maint") == {"master1": "MAINT", "master2": "UP"}
    # leaving maintenance, haproxy serves a server again at once, before any check passed:
    # put_back sets `ready` only once the apiserver answers /readyz
    assert states("ready before any check")["master2"].split()[0] == "UP"
    assert states("ready until UP") == {"master1": "UP", "master2": "UP"}
    assert answers["no such server"].strip() == "exit 2"
    assert "haproxy refused `set server kube-apiserver/nosuch state drain`: No such server." in result.stderr


def test_the_server_state_saved_before_a_reload_keeps_health_but_not_maintenance(tmp_path: Path):
    socket_path, state = tmp_path / "admin.sock", tmp_path / "state" / "server-state"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(socket=socket_path))
    save = f"sh -c {shlex.quote(_SAVE_SERVER_STATE_SCRIPT)} sh {socket_path} {state}"
    result = run_in_namespaces(
        "ip link set lo up\n"
        f"{save} && echo '=== no haproxy' && cat {state}\n"
        f"{shlex.join([sys.executable, '-c', LISTEN])} &\n"
        f"haproxy -f {cfg} -D -p {tmp_path / 'haproxy.pid'}\n"
        "sleep 1\n"  # both UP, at full health
        f"sh -c {shlex.quote(_HAPROXY_API_SCRIPT)} sh {socket_path} 'set server kube-apiserver/master1 state maint'\n"
        f"{save} && echo '=== saved' && cat {state}\n"
        f"kill $(cat {tmp_path / 'haproxy.pid'}) $!\n", net=True)
    assert result.returncode == 0, result.stderr
    answers = {name: text for name, _, text in (part.partition("\n") for part in result.stdout.split("=== ")[1:])}
    assert answers["no haproxy"].strip() == "1"  # a start: no servers to carry over
    lines = answers["saved"].splitlines()
    assert lines[0] == "1" and lines[1].startswith("# be_id be_name srv_id srv_name")
    rows = {row[3]: row for row in (line.split() for line in lines[2:] if line.strip())}
    assert rows.keys() == {"master1", "master2"}
    # master1 was put in maintenance at runtime: that is not carried over (the config says
    # who is disabled), its down state is; master2 keeps its full health (rise + fall - 1)
    assert rows["master1"][6] == "0" and rows["master1"][5] == "0"
    assert rows["master2"][5] == "2" and rows["master2"][12] == "4"
    assert not list(state.parent.glob("*.tmp"))
