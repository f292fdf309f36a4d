"""Benchmark: runbooks' own procedures replayed in the lab, each next to the kubeha command
doing the same change, in one run: API availability on every path.

    sudo .venv/bin/python bench/runbook_replay.py [--runs 1] [--runbook 003] [--runbook 000]

Every side gets a lab of its own (KUBEHA_LAB_ID=5, kubeasz layout: the control plane runs
as systemd units, as on the runbooks' machines; 3 masters, 3 spares, 3 workers); the probe
reads the API every 50 ms through the VIP, each LB host and each worker's node-local proxy,
and writes numbered etcd keys.

- 003_a864bf33197b6b85.txt, steps 3-6, host by host as its text goes: stop controller-manager,
  scheduler and apiserver on every old master; on every spare install a master's certs,
  units and configs and start its apiserver, node-local proxy and kubelet, not yet
  controller-manager and scheduler (waited for until /readyz answers); point the clients
  at the new masters (the LB hosts' haproxy backends, every worker's node-local proxy,
  reloaded; kubelet restarted); start controller-manager and scheduler. etcd is not moved
  (the runbook moves it before and after, a member at a time), so this is a lower bound
  for the runbook's outage. kubeha: `migrate-masters --replace master1=spare1,...`.
- 000_f448c9e8c343724a.txt (kubeasz's VIP change), steps 2-7, each playbook on all its
  hosts at once as ansible runs it: delete every Node; keepalived with the new VIP
  restarted on every LB host; the apiserver cert reissued with the new VIP and every
  master's components restarted; every kubelet restarted with a new kubeconfig (written
  directly: the lab's kubelet does no TLS bootstrap). kubeha: `change-endpoint --vip`.
  The probe's VIP path is the old VIP, which the runbook drops at its step 3.

Per side and path kind: failed requests (after the retry), the longest gap; the replays'
step times. Writes bench/results/runbook_replay.json; BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from availability import by_path_kind, kind_cell, operation_count, probe_of

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities
from kubeha.inventory import load_inventory
from kubeha.lab import Lab, LabSpec
from kubeha.lab.topology import host_files
from kubeha.lb import keepalived_priority
from kubeha.model import Cluster, Host, Layout, Role
from kubeha.pki.cluster import ClusterAuthorities, apiserver_files
from kubeha.render import render_haproxy_cfg, render_keepalived_conf, render_node_proxy_conf
from provenance import provenance

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


def authorities(inventory: Path, master: Host) -> ClusterAuthorities:
    """The CAs and the service-account key as stored on ``master`` (what the runbook's
    start_master script is given)."""
    with ClusterAccess(load_inventory(inventory)) as access:
        return load_authorities(access, master)


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


class Steps:
    """The replay's steps: each one's start (seconds from the first) and duration."""

    def __init__(self) -> None:
        self.done: list[dict] = []
        self.begun = time.monotonic()

    def __call__(self, name: str, action: Callable[[], None]) -> None:
        started = time.monotonic()
        action()
        self.done.append({"step": name, "at_s": round(started - self.begun, 2),
                          "seconds": round(time.monotonic() - started, 2)})


def on_each(lab: Lab, hosts, command: list[str]) -> None:
    """``command`` on every host at once, as ansible runs a play (forks >= hosts)."""
    with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
        list(pool.map(lambda h: lab.on(h.name, command), hosts))


def replay_003(lab: Lab, cluster: Cluster) -> list[dict]:
    """Runbook 003's steps 3-6, host by host as its text goes."""
    after = moved(cluster)
    old, new = cluster.masters, after.masters
    auth = authorities(lab.paths.inventory, old[0])
    step = Steps()

    def stop_old() -> None:
        for m in old:
            lab.on(m.name, ["systemctl", "stop", "kube-controller-manager", "kube-scheduler", "kube-apiserver"])

    def start_new() -> None:
        for s in new:
            lab.install_files(s.name, host_files(after, s, auth))
            lab.on(s.name, ["systemctl", "start", "nginx", "kube-apiserver", "kubelet"])
        for s in new:
            wait_ready(lab, after, s)

    def repoint_clients() -> None:
        paths = after.paths
        for lb in after.lb_hosts:
            lab.install_files(lb.name, {paths.haproxy_cfg: (render_haproxy_cfg(after).encode(), 0o644)})
            lab.on(lb.name, ["systemctl", "reload", "haproxy"])
        for w in after.workers:
            lab.install_files(w.name, {paths.node_proxy_conf: (render_node_proxy_conf(after).encode(), 0o644)})
            lab.on(w.name, ["systemctl", "reload", "nginx"])
            lab.on(w.name, ["systemctl", "restart", "kubelet"])

    def start_controllers() -> None:
        for s in new:
            lab.on(s.name, ["systemctl", "start", "kube-controller-manager", "kube-scheduler"])

    step("3: stop the old masters' apiserver, controller-manager, scheduler", stop_old)
    step("4: start the new masters' apiservers (no controller-manager, scheduler); wait for /readyz", start_new)
    step("5: point haproxy and the node-local proxies at the new masters; restart kubelet", repoint_clients)
    step("6: start controller-manager and scheduler on the new masters", start_controllers)
    return step.done


def new_vip(cluster: Cluster) -> Cluster:
    """The cluster with its VIP moved 50 addresses up (as kubeha's side is asked to)."""
    return cluster.model_copy(update={"vip": cluster.vip.model_copy(update={"address": cluster.vip.address + 50})})


def replay_000(lab: Lab, cluster: Cluster) -> list[dict]:
    """Runbook 000's change steps 2-7, each playbook on all its hosts at once (ansible). The
    kubelets' TLS bootstrap, which the lab's kubelet does not do, is replaced by writing the
    kubeconfig it would get; the masters' reissued cert is kubeha's (same SANs as kubeasz's)."""
    after = new_vip(cluster)
    auth = authorities(lab.paths.inventory, cluster.masters[0])
    paths = after.paths
    nodes = tuple(h for h in after.hosts if h.has(Role.MASTER) or h.has(Role.WORKER))
    step = Steps()

    def delete_nodes() -> None:
        with lab.api(cluster) as api:
            for node in api.get("/api/v1/nodes").raise_for_status().json()["items"]:
                api.delete(f"/api/v1/nodes/{node['metadata']['name']}").raise_for_status()

    def prepare() -> None:  # 01.prepare.yml: the LB role (handlers: restart on change) and kubeconfigs
        for lb in after.lb_hosts:
            conf = render_keepalived_conf(after, lb, keepalived_priority(after, lb)).encode()
            lab.install_files(lb.name, {paths.keepalived_conf: (conf, 0o644),
                                        paths.admin_kubeconfig: host_files(after, lb, auth)[paths.admin_kubeconfig]})
        on_each(lab, after.lb_hosts, ["systemctl", "restart", "keepalived"])

    def masters() -> None:  # steps 4 and 6: kubernetes.pem deleted, 04.kube-master.yml
        for m in after.masters:
            lab.install_files(m.name, apiserver_files(after, m, auth))
        on_each(lab, after.masters, ["systemctl", "restart", "kube-apiserver", "kube-controller-manager",
                                     "kube-scheduler"])

    def kubelets() -> None:  # steps 5 and 7: kubelet.kubeconfig deleted, 05.kube-node.yml
        for h in nodes:
            lab.install_files(h.name, {paths.kubelet_kubeconfig: host_files(after, h, auth)[paths.kubelet_kubeconfig]})
        on_each(lab, nodes, ["systemctl", "restart", "kubelet"])

    step("2: delete every Node", delete_nodes)
    step("3: 01.prepare.yml: keepalived with the new VIP restarted on every LB host", prepare)
    step("4, 6: 04.kube-master.yml: apiserver cert with the new VIP; every master's components restarted at once",
         masters)
    step("5, 7: 05.kube-node.yml: new kubelet kubeconfig; every kubelet restarted at once", kubelets)
    return step.done


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


def measure_runbook(state: Path, runbook: str) -> dict:
    lab = Lab()
    try:
        lab.up(SPEC)
        cluster = load_inventory(lab.paths.inventory).cluster
        started = time.monotonic()
        summary, steps = probed(lab.paths.inventory, state / f"probe-{runbook}",
                                lambda: RUNBOOKS[runbook][0](lab, cluster))
        return {"side": f"runbook {runbook} replayed", "wall_seconds": round(time.monotonic() - started, 1),
                "steps": steps, **side(summary["paths"], summary.get("etcd"))}
    finally:
        lab.down()


def measure_kubeha(state: Path, runbook: str) -> dict:
    lab = Lab()
    try:
        lab.up(SPEC)
        inventory = lab.paths.inventory
        arguments = RUNBOOKS[runbook][1](load_inventory(inventory).cluster)
        journal = state / f"journal-{runbook}.sqlite"
        done = subprocess.run([sys.executable, "-m", "kubeha.cli", *arguments,
                               "-i", str(inventory), "--journal", str(journal), "--yes"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0 or operation_count(journal) == 0:
            raise RuntimeError(f"kubeha {arguments[0]} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        found = probe_of(journal)
        return {"side": f"kubeha {arguments[0]}", "wall_seconds": found["wall_seconds"],
                "by_kind": found["by_kind"], "etcd_writes_lost": found["etcd_writes_lost"]}
    finally:
        lab.down()


# runbook: its replay, and kubeha's command doing the same change
RUNBOOKS: dict[str, tuple[Callable[[Lab, Cluster], list[dict]], Callable[[Cluster], list[str]]]] = {
    "003": (replay_003, lambda c: ["migrate-masters", "--replace",
                                   ",".join(f"{m.name}=spare{i}" for i, m in enumerate(c.masters, 1))]),
    "000": (replay_000, lambda c: ["change-endpoint", "--vip", str(new_vip(c).vip.address)]),
}


def markdown_rows(runs: list[list[dict]]) -> list[str]:
    return ["| " + " | ".join([str(number), r["side"], str(r["wall_seconds"]),
                               *(kind_cell(r["by_kind"], kind) for kind in ("vip", "lb", "node-proxy")),
                               str(r["etcd_writes_lost"])]) + " |"
            for number, run in enumerate(runs, 1) for r in run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--runbook", action="append", choices=sorted(RUNBOOKS),
                        help="Only this runbook (repeatable); default: every one.")
    args = parser.parse_args()
    # started in the background by a shell without job control, SIGINT comes ignored, and an
    # ignored signal stays ignored in children: the probe would not stop on its Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["KUBEHA_LAB_ID"] = LAB_ID
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kubeha-replay-") as state:
            run = [measure(Path(state), runbook) for runbook in args.runbook or sorted(RUNBOOKS)
                   for measure in (measure_runbook, measure_kubeha)]
        print(json.dumps(run), flush=True)
        runs.append(run)
    result = {**provenance(),
              "command": " ".join(["bench/runbook_replay.py", *sys.argv[1:]]), "layout": SPEC.layout.value, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | side | wall s | VIP: failed (after retry), longest gap | LB hosts | node-local proxies "
          "| etcd writes lost |")
    print("\n".join(markdown_rows(runs)))


if __name__ == "__main__":
    main()
