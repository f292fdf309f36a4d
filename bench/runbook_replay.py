"""Benchmark: runbook 003's own procedure (stop the old masters, then start new ones) replayed
in the lab, next to kubeha's migrate-masters doing the same move, in one run.

    sudo .venv/bin/python bench/runbook_replay.py [--runs 1]

Both sides get a lab of their own (KUBEHA_LAB_ID=5, kubeasz layout: masters run the control
plane as systemd units, as the runbook's machines do; 3 masters, 3 spares, 3 workers) and
move the masters to the spares while the probe reads the API every 50 ms through the VIP,
each LB host and each worker's node-local proxy, and writes numbered etcd keys.

- kubeha: `kubeha migrate-masters --replace master1=spare1,... --yes`; its own probe.
- the runbook (003_a864bf33197b6b85.txt, steps 3-6), as its operator would do it, host by
  host: stop controller-manager, scheduler and apiserver on every old master (step 3); on
  every spare install the certs, units and configs of a master and start its apiserver,
  node-local proxy and kubelet, without controller-manager and scheduler (step 4; waited
  for until /readyz answers); point the clients at the new masters: the LB hosts' haproxy
  backends and every worker's node-local proxy, reloaded, kubelet restarted (step 5); start
  controller-manager and scheduler on the new masters (step 6). etcd is not moved (the
  runbook moves it before and after, one member at a time; kubeha's run moves it too), so
  the replay's numbers are a lower bound for the runbook's outage.

Per side and path kind: failed requests (after the retry), the longest gap; the replay's
step times. Writes bench/results/runbook_replay.json; BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from availability import by_path_kind, kind_cell, operation_count, probe_of

from kubeha.inventory import load_inventory
from kubeha.lab import Lab, LabSpec
from kubeha.lab.topology import host_files
from kubeha.model import Cluster, Host, Layout, Role
from kubeha.pki import KeyAndCert
from kubeha.pki.cluster import ClusterAuthorities
from kubeha.render import render_haproxy_cfg, render_node_proxy_conf

RESULTS = Path(__file__).parent / "results" / "runbook_replay.json"
LAB_ID = "5"
SPEC = LabSpec(layout=Layout.KUBEASZ)
READY_SECONDS = 120


def moved(cluster: Cluster) -> Cluster:
    """The cluster once the runbook moved its masters to the spares: the old masters keep
    etcd and the LB (haproxy, keepalived), the spares are the masters."""
    spares = [h.name for h in cluster.hosts if not h.roles]

    def after(host: Host) -> Host:
        if host.has(Role.MASTER):
            return host.model_copy(update={"roles": frozenset({Role.ETCD, Role.LB})})
        if host.name in spares:
            return host.model_copy(update={"roles": frozenset({Role.MASTER})})
        return host
    return cluster.model_copy(update={"hosts": tuple(after(h) for h in cluster.hosts)})


def authorities(lab: Lab, cluster: Cluster, master: str) -> ClusterAuthorities:
    """The CAs and the service-account key as stored on ``master`` (what the runbook's
    start_master script is given)."""
    def read(path) -> bytes:
        return lab.paths.on_host(master, path).read_bytes()
    p = cluster.paths
    ca = KeyAndCert(key_pem=read(p.ca.key), cert_pem=read(p.ca.cert))
    etcd_ca = ca if p.etcd_ca == p.ca else KeyAndCert(key_pem=read(p.etcd_ca.key), cert_pem=read(p.etcd_ca.cert))
    return ClusterAuthorities(ca=ca, etcd_ca=etcd_ca,
                              service_account=(read(p.service_account_key), read(p.service_account_pub)))


def install(lab: Lab, host: str, path, content: bytes, mode: int) -> None:
    target = lab.paths.on_host(host, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    os.chmod(target, mode)


def wait_ready(lab: Lab, cluster: Cluster, host: Host) -> None:
    deadline = time.monotonic() + READY_SECONDS
    with lab.api(cluster, server=f"https://{host.address}:{cluster.apiserver_port}") as api:
        while time.monotonic() < deadline:
            try:
                if api.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:  # not listening yet: the runbook's operator waits too
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the new apiserver on {host.name} was not ready in {READY_SECONDS} s")


def replay_003(lab: Lab, cluster: Cluster) -> list[dict]:
    """Runbook 003's steps 3-6 on the lab; each step's start (seconds from the first) and duration."""
    after = moved(cluster)
    old, new = cluster.masters, after.masters
    auth = authorities(lab, cluster, old[0].name)
    steps: list[dict] = []
    begun = time.monotonic()

    def step(name: str, action) -> None:
        started = time.monotonic()
        action()
        steps.append({"step": name, "at_s": round(started - begun, 2),
                      "seconds": round(time.monotonic() - started, 2)})

    def stop_old() -> None:
        for m in old:
            lab.on(m.name, ["systemctl", "stop", "kube-controller-manager", "kube-scheduler", "kube-apiserver"])

    def start_new() -> None:
        for s in new:
            for path, (content, mode) in host_files(after, s, auth).items():
                install(lab, s.name, path, content, mode)
            lab.on(s.name, ["systemctl", "start", "nginx", "kube-apiserver", "kubelet"])
        for s in new:
            wait_ready(lab, after, s)

    def repoint_clients() -> None:
        paths = after.paths
        for lb in after.lb_hosts:
            install(lab, lb.name, paths.haproxy_cfg, render_haproxy_cfg(after).encode(), 0o644)
            lab.on(lb.name, ["systemctl", "reload", "haproxy"])
        for w in after.workers:
            install(lab, w.name, paths.node_proxy_conf, render_node_proxy_conf(after).encode(), 0o644)
            lab.on(w.name, ["systemctl", "reload", "nginx"])
            lab.on(w.name, ["systemctl", "restart", "kubelet"])

    def start_controllers() -> None:
        for s in new:
            lab.on(s.name, ["systemctl", "start", "kube-controller-manager", "kube-scheduler"])

    step("3: stop the old masters' apiserver, controller-manager, scheduler", stop_old)
    step("4: start the new masters' apiservers (no controller-manager, scheduler); wait for /readyz", start_new)
    step("5: point haproxy and the node-local proxies at the new masters; restart kubelet", repoint_clients)
    step("6: start controller-manager and scheduler on the new masters", start_controllers)
    return steps


def probed(inventory: Path, out: Path, action) -> tuple[dict, object]:
    """``action()`` run while `kubeha probe` reads every path (and writes etcd keys); the
    probe's summary and ``action``'s result."""
    probe = subprocess.Popen([sys.executable, "-m", "kubeha.cli", "probe", "-i", str(inventory),
                              "--node-proxies", "--etcd-writes", "--out", str(out), "--json"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "probe.jsonl").exists():  # its paths are open: the run may start
            if probe.poll() is not None:
                raise RuntimeError(f"kubeha probe ended: {probe.stderr.read()[-500:]}")
            time.sleep(0.2)
        time.sleep(3)  # a few seconds of the steady state before
        result = action()
        time.sleep(3)  # and after
    finally:
        probe.send_signal(signal.SIGINT)
        probe.communicate(timeout=120)
    return json.loads((out / "summary.json").read_text()), result


def side(paths: list[dict], etcd: dict | None) -> dict:
    named = {p["path"]: p for p in paths}
    lost = None if not etcd or etcd["lost"] is None else len(etcd["lost"])
    return {"by_kind": by_path_kind(named), "etcd_writes_lost": lost}


def measure_runbook(state: Path) -> dict:
    lab = Lab()
    try:
        lab.up(SPEC)
        cluster = load_inventory(lab.paths.inventory).cluster
        started = time.monotonic()
        summary, steps = probed(lab.paths.inventory, state / "probe", lambda: replay_003(lab, cluster))
        return {"side": "runbook 003 replayed", "wall_seconds": round(time.monotonic() - started, 1),
                "steps": steps, **side(summary["paths"], summary.get("etcd"))}
    finally:
        lab.down()


def measure_kubeha(state: Path) -> dict:
    lab = Lab()
    try:
        lab.up(SPEC)
        inventory = lab.paths.inventory
        masters = [h.name for h in load_inventory(inventory).cluster.masters]
        journal = state / "journal.sqlite"
        replace = ",".join(f"{m}=spare{i}" for i, m in enumerate(masters, 1))
        done = subprocess.run([sys.executable, "-m", "kubeha.cli", "migrate-masters", "--replace", replace,
                               "-i", str(inventory), "--journal", str(journal), "--yes"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0 or operation_count(journal) == 0:
            raise RuntimeError(f"kubeha migrate-masters failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        found = probe_of(journal)
        return {"side": "kubeha migrate-masters", "wall_seconds": found["wall_seconds"],
                "by_kind": found["by_kind"], "etcd_writes_lost": found["etcd_writes_lost"]}
    finally:
        lab.down()


def markdown_rows(runs: list[list[dict]]) -> list[str]:
    return ["| " + " | ".join([str(number), r["side"], str(r["wall_seconds"]),
                               *(kind_cell(r["by_kind"], kind) for kind in ("vip", "lb", "node-proxy")),
                               str(r["etcd_writes_lost"])]) + " |"
            for number, run in enumerate(runs, 1) for r in run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.environ["KUBEHA_LAB_ID"] = LAB_ID
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kubeha-replay-") as state:
            run = [measure_runbook(Path(state)), measure_kubeha(Path(state))]
        print(json.dumps(run), flush=True)
        runs.append(run)
    result = {"date": datetime.now(timezone.utc).date().isoformat(),
              "machine": f"{os.cpu_count()} cores, Linux {platform.release()}",
              "command": f"bench/runbook_replay.py --runs {args.runs}", "layout": SPEC.layout.value, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | side | wall s | VIP: failed (after retry), longest gap | LB hosts | node-local proxies "
          "| etcd writes lost |")
    print("\n".join(markdown_rows(runs)))


if __name__ == "__main__":
    main()
