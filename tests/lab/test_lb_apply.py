"""`kubeha lb apply` on a lab built without VIP and load balancers: it brings them up,
reloads them without a failed request, and a config its binary rejects changes nothing."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers.lab import require_lab_prerequisites, side_lab_names

from kubeha.access import ClusterAccess
from kubeha.errors import HostError
from kubeha.inventory import Inventory, dump_inventory, load_inventory
from kubeha.lab import Lab, LabSpec
from kubeha.lab.topology import VIP_OFFSET
from kubeha.lb import apply_lb_plan, lb_configs, plan_lb_apply, read_lb_state
from kubeha.lb.apply import HAPROXY_API_FUNCTION, RELOAD_PENDING_DIR
from kubeha.model import Cluster, Layout, VirtualIP
from kubeha.render import HAPROXY_ADMIN_SOCKET

pytestmark = pytest.mark.lab

KUBEHA = [sys.executable, "-m", "kubeha.cli"]
PROBE_INTERVAL = 0.05


class LbLab:
    """A lab without load balancers, and inventories of it with a VIP."""

    def __init__(self, lab: Lab, layout: Layout) -> None:
        self.lab = lab
        self.layout = layout
        self.inventory = load_inventory(lab.paths.inventory)
        vip = VirtualIP(address=lab.topology().subnet.network_address + VIP_OFFSET, port=8443)
        self.cluster = self.inventory.cluster.model_copy(update={"vip": vip, "node_local_proxy": True})
        self.full = self.write("cluster-lb.yaml", self.cluster)
        # master3 leaves the LB hosts and the backends
        self.cluster_without_master3 = self.cluster.model_copy(
            update={"hosts": tuple(h for h in self.cluster.hosts if h.name != "master3")})
        self.without_master3 = self.write("cluster-lb-without-master3.yaml", self.cluster_without_master3)

    def write(self, name: str, cluster: Cluster) -> Path:
        path = self.lab.paths.root / name
        path.write_text(dump_inventory(self.inventory.model_copy(update={"cluster": cluster})))
        return path

    def apply(self, inventory: Path) -> tuple[str, float]:
        """``kubeha lb apply --yes``: its output and wall time."""
        started = time.monotonic()
        done = subprocess.run([*KUBEHA, "lb", "apply", "-i", str(inventory), "--yes"], capture_output=True,
                              text=True, timeout=180, env=os.environ | {"COLUMNS": "200"})
        seconds = time.monotonic() - started
        print(done.stdout, done.stderr, f"lb apply took {seconds:.1f} s", sep="\n")
        assert done.returncode == 0, done.stderr
        return done.stdout, seconds

    def tls(self, *, client_cert: bool) -> ssl.SSLContext:
        tls = ssl.create_default_context(cafile=str(self.lab.paths.ca_cert))
        # the apiserver certs of a lab built without a VIP do not name it; the chain is still verified
        tls.check_hostname = False
        if client_cert:
            tls.load_cert_chain(str(self.lab.paths.admin_cert), str(self.lab.paths.admin_key))
        return tls

    def managed_files(self) -> dict[tuple[str, str], bytes | None]:
        """Every managed config of the full cluster, read from the lab's disk."""
        files = {}
        for config in lb_configs(self.cluster):
            path = self.lab.paths.on_host(config.host.name, config.path)
            files[(config.host.name, str(config.path))] = path.read_bytes() if path.exists() else None
        return files

    def servers_up_for(self, host: str) -> dict[str, int]:
        """haproxy's servers on ``host``: seconds since each last changed state (up/down)."""
        shown = self.lab.on(host, ["sh", "-c", HAPROXY_API_FUNCTION + f'api {HAPROXY_ADMIN_SOCKET} "show servers state"'])
        rows = [line.split() for line in shown.stdout.splitlines()[2:] if line.strip()]
        return {row[3]: int(row[9]) for row in rows}

    def main_pid(self, host: str, unit: str) -> str:
        return self.lab.on(host, ["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()


@pytest.fixture(scope="module", params=[Layout.KUBEADM, Layout.KUBEASZ], ids=lambda layout: layout.value)
def lb_lab(request):
    require_lab_prerequisites()
    lab = Lab(side_lab_names(), log=print)
    try:
        lab.up(LabSpec(with_lb=False, layout=request.param, spares=0))
        yield LbLab(lab, request.param)
    finally:
        lab.down()
        assert not lab.leftovers()


def test_apply_brings_up_the_vip_and_the_proxies_and_a_second_apply_changes_nothing(lb_lab):
    lab, cluster = lb_lab.lab, lb_lab.cluster
    output, seconds = lb_lab.apply(lb_lab.full)
    assert "started keepalived" in output and "holds the VIP" in output
    assert lab.vip_holders(cluster) == ["master1"]
    with httpx.Client(base_url=cluster.endpoint, verify=lb_lab.tls(client_cert=False), timeout=2) as api:
        assert api.get("/readyz").status_code == 200
    proxy_hosts = ["worker1"] + (["master1"] if lb_lab.layout is Layout.KUBEASZ else [])
    for host in proxy_hosts:
        assert lab.on(host, ["curl", "-sk", "https://127.0.0.1:6443/readyz"]).stdout == "ok"
    for master in ("master1", "master2", "master3"):
        assert lab.on(master, ["systemctl", "is-active", "haproxy", "keepalived"]).stdout.split() == ["active"] * 2
        assert lab.on(master, ["systemctl", "is-enabled", "haproxy"]).stdout.strip() == "enabled"

    again, _ = lb_lab.apply(lb_lab.full)
    assert "no change" in again and "wrote" not in again
    shown = subprocess.run([*KUBEHA, "lb", "apply", "-i", str(lb_lab.full), "--dry-run", "--json"],
                           capture_output=True, text=True, timeout=180)
    steps = json.loads(shown.stdout)
    assert steps and not any(s["changes"] for s in steps) and {s["host"] for s in steps} >= {"master1", "worker1"}


def test_changed_backends_reload_haproxy_and_nginx_without_a_failed_request(lb_lab):
    lab, cluster = lb_lab.lab, lb_lab.cluster
    haproxy_pids = {m: lb_lab.main_pid(m, "haproxy") for m in ("master1", "master2")}
    time.sleep(2)  # every server up for 2 s at least
    up_for = {m: lb_lab.servers_up_for(m) for m in ("master1", "master2")}
    read_at = time.monotonic()
    results: list[str] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=cluster.endpoint, verify=lb_lab.tls(client_cert=True), timeout=2) as api:
            while not stop.is_set():
                try:
                    results.append(str(api.get("/api/v1/namespaces/default").status_code))
                except httpx.HTTPError as e:
                    results.append(type(e).__name__)
                time.sleep(PROBE_INTERVAL)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        time.sleep(1.0)
        output, _ = lb_lab.apply(lb_lab.without_master3)
        time.sleep(1.0)
    finally:
        stop.set()
        prober.join()
    failed = [r for r in results if r != "200"]
    print(f"probe: {len(results)} requests through the VIP, {len(failed)} failed: {failed[:5]}")
    assert failed == [] and len(results) > 20
    for master in ("master1", "master2"):
        assert f"{master}: wrote /etc/haproxy/haproxy.cfg, reloaded haproxy" in output
        assert lb_lab.main_pid(master, "haproxy") == haproxy_pids[master]  # seamless: same master process
        assert "master3" not in lab.paths.on_host(master, "/etc/haproxy/haproxy.cfg").read_text()
        # the new haproxy process carried on each server's state (saved before the reload),
        # not starting it one failed check from down: its servers have been up since before
        # it started (without the file: at most the seconds since the reload)
        after, elapsed = lb_lab.servers_up_for(master), int(time.monotonic() - read_at)
        print(master, "servers up for (s) before the reload:", up_for[master], "after:", after, "elapsed:", elapsed)
        assert after.keys() == {"master1", "master2"}
        assert all(after[s] >= up_for[master][s] + elapsed - 1 > elapsed for s in after), (up_for[master], after)
    assert "worker1: wrote /etc/nginx/nginx.conf, reloaded nginx" in output
    assert "wrote /etc/keepalived" not in output  # multicast: keepalived names no peers

    restored, _ = lb_lab.apply(lb_lab.full)
    assert "reloaded haproxy" in restored


def test_a_config_written_by_a_run_killed_before_its_reload_is_reloaded_by_the_next(lb_lab):
    """A run SIGKILLed between writing haproxy.cfg and reloading haproxy leaves its marker:
    the next apply finds the file as wanted and reloads haproxy all the same."""
    lb_lab.apply(lb_lab.full)
    marker = f"{RELOAD_PENDING_DIR}/haproxy"
    lb_lab.lab.on("master2", ["sh", "-c", f"mkdir -p {RELOAD_PENDING_DIR} && touch {marker}"])
    before = lb_lab.main_pid("master2", "haproxy")
    output, _ = lb_lab.apply(lb_lab.full)
    assert "master2: reloaded haproxy" in output and "wrote" not in output, output
    assert lb_lab.main_pid("master2", "haproxy") == before  # reloaded, not restarted
    assert not lb_lab.lab.paths.on_host("master2", marker).exists()


def test_a_config_its_binary_rejects_changes_nothing_on_any_host(lb_lab, monkeypatch):
    before = lb_lab.managed_files()
    monkeypatch.setattr("kubeha.lb.plan.render_haproxy_cfg", lambda cluster, **_: "garbage here\n")
    inventory = Inventory(cluster=lb_lab.cluster_without_master3, ssh=lb_lab.inventory.ssh)
    with ClusterAccess(inventory) as access:
        state = read_lb_state(access, inventory.cluster)
        plan = plan_lb_apply(inventory.cluster, state.files, state.running)
        assert {s.unit for s in plan.pending} == {"haproxy", "nginx"}  # nginx alone would be fine
        with pytest.raises(HostError) as rejected:
            apply_lb_plan(access, plan, operation_id="lb-apply-rejected")
    message = str(rejected.value)
    print(message)
    assert message.startswith("master1: haproxy rejected the new /etc/haproxy/haproxy.cfg: ")
    assert "unknown keyword 'garbage'" in message and "nothing was changed on any host" in message
    assert lb_lab.managed_files() == before
    for host in ("master1", "worker1"):
        assert not lb_lab.lab.paths.on_host(host, "/var/lib/kubeha/backups/lb-apply-rejected").exists()


def test_a_failure_mid_way_restores_the_failing_host_and_stops(lb_lab):
    lab = lb_lab.lab
    worker2_conf = lab.paths.on_host("worker2", "/etc/nginx/nginx.conf")
    before = worker2_conf.read_bytes()
    lab.on("worker2", ["systemctl", "stop", "nginx"])
    # something else holds worker2's node-local port: nginx passes `nginx -t` but cannot start
    squatter = subprocess.Popen(
        ["ip", "netns", "exec", lab.names.netns("worker2"), sys.executable, "-c",
         "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 6443)); s.listen(); time.sleep(120)"])
    try:
        time.sleep(0.5)
        done = subprocess.run([*KUBEHA, "lb", "apply", "-i", str(lb_lab.without_master3), "--yes"],
                              capture_output=True, text=True, timeout=180, env=os.environ | {"COLUMNS": "400"})
    finally:
        squatter.kill()
        squatter.wait()
    print(done.stdout, done.stderr, sep="\n")
    assert done.returncode == 1
    error = " ".join(done.stderr.split())
    assert error.startswith("error: worker2: `systemctl enable --now nginx` failed: ")
    assert "Address already in use" in error
    assert "(restored /etc/nginx/nginx.conf on worker2)" in error
    assert worker2_conf.read_bytes() == before
    assert lab.on("worker2", ["systemctl", "is-active", "nginx"], check=False).stdout.strip() != "active"
    assert "worker1: wrote /etc/nginx/nginx.conf, reloaded nginx" in done.stdout  # done before worker2 failed
    assert b"master3" not in lab.paths.on_host("worker1", "/etc/nginx/nginx.conf").read_bytes()

    repaired, _ = lb_lab.apply(lb_lab.full)
    assert "worker2: started nginx" in repaired  # its nginx.conf is the restored, current one
