"""An apiserver taken out of every load balancer, stopped and started the way its layout
does it, and put back: no request fails (one retry allowed) on any path of the probe. Taking
out the last serving apiserver is refused and changes nothing."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone

import pytest
from helpers.wait import wait_for

import kubeha.lb.drain as drain
from kubeha.access import ClusterAccess
from kubeha.hosts import BackupSet
from kubeha.inventory import Inventory, SshDefaults
from kubeha.lab import Lab
from kubeha.lb import DrainRefused, backend_states, node_proxy_hosts, put_back, take_out
from kubeha.model import Layout
from kubeha.probe import Probe

pytestmark = pytest.mark.lab

VICTIM = "master1"
DOWN_SECONDS = 2.0  # requests keep coming while the apiserver is stopped


def _inventory(lab: Lab) -> Inventory:
    """The lab's cluster (without its spare hosts) and its SSH key, as its cluster.yaml has them."""
    return Inventory(cluster=lab.topology().cluster,
                     ssh=SshDefaults(key_file=lab.paths.ssh_key, known_hosts=lab.paths.known_hosts))


def _operation_id(what: str) -> str:
    return f"lb-drain-{what}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}"


def _stop_start(lab: Lab, layout: Layout) -> tuple[list[str], list[str]]:
    if layout is Layout.KUBEADM:
        manifest, away = "/etc/kubernetes/manifests/kube-apiserver.yaml", "/etc/kubernetes/kube-apiserver.yaml.drained"
        return ["mv", manifest, away], ["sh", "-c", f"[ ! -e {away} ] || mv {away} {manifest}"]
    return ["systemctl", "stop", "kube-apiserver"], ["systemctl", "start", "kube-apiserver"]


def _apiserver_runs(lab: Lab, host: str) -> bool:
    """Whether a kube-apiserver process runs in the host's network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", lab.names.netns(host)], capture_output=True, text=True,
                          check=True).stdout.split()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"standins.apiserver" in f.read():
                    return True
        except OSError:
            pass
    return False


def _nginx_confs(lab: Lab, cluster) -> dict[str, bytes]:
    return {h.name: lab.paths.on_host(h.name, cluster.paths.node_proxy_conf).read_bytes()
            for h in node_proxy_hosts(cluster)}


def test_an_apiserver_taken_out_stopped_started_and_put_back_fails_no_request(lab: Lab, monkeypatch):
    waited: list[float] = []  # put_back's wait for the apiserver's /readyz, apart from its LB work
    wait_ready = drain._wait_ready

    def timed_wait_ready(*args, **kwargs):
        started = time.monotonic()
        try:
            return wait_ready(*args, **kwargs)
        finally:
            waited.append(time.monotonic() - started)

    monkeypatch.setattr(drain, "_wait_ready", timed_wait_ready)
    inventory = _inventory(lab)
    cluster = inventory.cluster
    stop, start = _stop_start(lab, cluster.layout)
    backup = BackupSet(_operation_id("restart"))
    with ClusterAccess(inventory) as access:
        wait_for(lambda: backend_states(access, cluster).in_everywhere(VICTIM), 30,
                 f"{VICTIM} in every load balancer (the lab is shared)")
        before = _nginx_confs(lab, cluster)
        probe = Probe(access, node_proxies=True)
        probe.start()
        try:
            time.sleep(1.0)
            started = time.monotonic()
            take_out(access, cluster, VICTIM, backup)
            take_out_seconds = time.monotonic() - started
            out = backend_states(access, cluster)

            lab.on(VICTIM, stop)
            wait_for(lambda: not _apiserver_runs(lab, VICTIM), 30, f"the apiserver on {VICTIM} to stop")
            time.sleep(DOWN_SECONDS)
            while_down = backend_states(access, cluster)
            lab.on(VICTIM, start)

            started = time.monotonic()
            put_back(access, cluster, VICTIM, backup)
            put_back_seconds = time.monotonic() - started
            time.sleep(1.0)
        finally:
            summary = probe.stop()
            lab.on(VICTIM, start)  # repairs whatever happened above; both steps are idempotent
            put_back(access, cluster, VICTIM, backup)
        back = backend_states(access, cluster)

    for p in summary.paths:
        print(p)
    print(f"take_out {take_out_seconds:.2f} s, put_back {put_back_seconds:.2f} s of which "
          f"{waited[0]:.2f} s waiting for the apiserver's /readyz; out: {out}; back: {back}")
    assert out.out_everywhere(VICTIM) and while_down.out_everywhere(VICTIM)
    assert all(servers[VICTIM] == "MAINT" for servers in out.haproxy.values())
    assert len(out.haproxy) == len(cluster.lb_hosts) and len(out.node_proxies) == len(node_proxy_hosts(cluster))
    assert back.in_everywhere(VICTIM)
    assert _nginx_confs(lab, cluster) == before  # put back as it was, byte for byte
    assert {p.path for p in summary.paths} >= {f"node-proxy/{w.name}" for w in cluster.workers}
    assert all(p.failures_after_retry == 0 for p in summary.paths), summary.paths
    assert all(p.requests > 20 for p in summary.paths), summary.paths


def test_taking_out_the_last_serving_apiserver_is_refused_and_changes_nothing(lab: Lab):
    inventory = _inventory(lab)
    cluster = inventory.cluster
    others = [m.name for m in cluster.masters if m.name != VICTIM]
    backup = BackupSet(_operation_id("refused"))
    with ClusterAccess(inventory) as access:
        wait_for(lambda: all(backend_states(access, cluster).in_everywhere(m.name) for m in cluster.masters),
                 30, "every apiserver in every load balancer (the lab is shared)")
        try:
            for name in others:
                take_out(access, cluster, name, backup, drain_seconds=0.5)
            take_out(access, cluster, others[0], backup, drain_seconds=0.5)  # out already: fine
            states, confs = backend_states(access, cluster), _nginx_confs(lab, cluster)
            refused_backup = BackupSet(_operation_id("refused-alone"))
            with pytest.raises(DrainRefused) as refused:
                take_out(access, cluster, VICTIM, refused_backup)
            assert backend_states(access, cluster) == states
            assert _nginx_confs(lab, cluster) == confs
            assert not any(lab.paths.on_host(h.name, refused_backup.directory).exists() for h in cluster.hosts)
        finally:
            for name in others:
                put_back(access, cluster, name, backup)
        assert all(backend_states(access, cluster).in_everywhere(m.name) for m in cluster.masters)
    message = str(refused.value)
    print(message)
    assert "\n" not in message
    lbs = ", ".join(h.name for h in cluster.lb_hosts)
    proxies = ", ".join(h.name for h in node_proxy_hosts(cluster))
    assert message == (f"refusing to take {VICTIM} out of the load balancers: the haproxy on {lbs} would have "
                       f"no other UP apiserver (others: {others[0]} MAINT, {others[1]} MAINT); the node-local "
                       f"proxy on {proxies} would have no other apiserver in rotation; bring another apiserver "
                       "back first (nothing was changed)")
    assert "nothing was changed" in message
