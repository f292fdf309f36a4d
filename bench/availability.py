"""Benchmark: API availability during each master operation, per probe path.

Target (issue: benchmarks): no failed request and no second without an answer, on any
path, during any of them.

    sudo .venv/bin/python bench/availability.py [--runs 1] [--layout kubeadm]

Each run builds a lab of its own (KUBEHA_LAB_ID=4; 3 masters, 3 spares, 3 workers) and runs
the operations one after another through the CLI, as an operator would (`--yes`), each
applied with its probe: GET /readyz every 50 ms on a new TLS connection through the VIP,
through each LB host and through each worker's node-local proxy, a failed request retried
once at once, plus numbered etcd writes read back at the end. In order: rolling-restart
(every component), repoint-nodes (the workers to the VIP, then back to their node-local
proxy), migrate-masters 3 -> 3 (to the spares), change-endpoint (a new VIP), add-master and
remove-master (an old master back, then out again). A command that fails ends the run.

Per operation and path: requests, failed first attempts, failed even after the retry, the
longest time without a success, latency p50/p99; etcd writes lost. Writes
bench/results/availability.json; BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubeha.inventory import load_inventory
from kubeha.lab import Lab, LabSpec
from kubeha.model import Cluster, Layout
from kubeha.plan import Journal
from provenance import provenance

RESULTS = Path(__file__).parent / "results" / "availability.json"
LAB_ID = "4"
COUNTED = ("requests", "failures", "failures_after_retry")  # summed over runs and paths
WORST = ("longest_gap_ms", "p50_ms", "p99_ms")  # the largest kept


def operations(cluster: Cluster) -> list[tuple[str, list[str]]]:
    """Each operation's name and its CLI arguments, in the order they run."""
    workers = ",".join(h.name for h in cluster.workers)
    masters = [h.name for h in cluster.masters]
    spares = ["spare1", "spare2", "spare3"]
    new_vip = str(cluster.vip.address + 50)
    return [
        ("rolling-restart", ["rolling-restart"]),
        ("repoint-nodes to the VIP", ["repoint-nodes", "--server", cluster.endpoint, "--hosts", workers]),
        ("repoint-nodes back", ["repoint-nodes", "--server", cluster.node_local_endpoint, "--hosts", workers]),
        ("migrate-masters 3 -> 3", ["migrate-masters", "--replace", ",".join(f"{o}={n}" for o, n in zip(masters, spares))]),
        ("change-endpoint", ["change-endpoint", "--vip", new_vip]),
        ("add-master", ["add-master", masters[0]]),
        ("remove-master", ["remove-master", masters[0]]),
    ]


def operation_count(journal_path: Path) -> int:
    if not journal_path.exists():
        return 0
    with Journal(journal_path) as journal:
        return len(journal.operation_ids())


def probe_of(journal_path: Path) -> dict:
    """The probe of the journal's newest operation, per path (every run of it summed; the
    longest gap and latencies are the worst run's), and its wall time."""
    with Journal(journal_path) as journal:
        operation_id = journal.operation_ids()[-1]
        runs = journal.runs(operation_id)
        paths: dict[str, dict] = {}
        lost: int | None = 0
        for probe in journal.probes(operation_id):
            for p in probe.summary["paths"]:
                _add(paths.setdefault(p["path"], {}), p, WORST)
            etcd = probe.summary.get("etcd")
            if etcd and lost is not None:
                lost = None if etcd["lost"] is None else lost + len(etcd["lost"])
    return {"operation_id": operation_id, "outcome": runs[-1].outcome.value if runs[-1].outcome else None,
            "wall_seconds": round((runs[-1].finished - runs[0].started).total_seconds(), 1),
            "etcd_writes_lost": lost, "by_kind": by_path_kind(paths), "paths": paths}


def _add(into: dict, path: dict, worst: tuple[str, ...]) -> None:
    """``path``'s numbers added to ``into``: the counts summed, the ``worst`` fields' largest kept."""
    for f in COUNTED:
        into[f] = into.get(f, 0) + path[f]
    for f in worst:
        into[f] = max(into.get(f, 0.0), round(path[f] or 0, 1))


def by_path_kind(paths: dict[str, dict]) -> dict[str, dict]:
    """The paths grouped by kind (vip, lb, node-proxy, etcd-writes): failures summed, the
    worst longest gap."""
    kinds: dict[str, dict] = {}
    for name, p in paths.items():
        into = kinds.setdefault(name.split("/")[0], {"paths": 0})
        into["paths"] += 1
        _add(into, p, ("longest_gap_ms",))
    return kinds


def measure(layout: Layout) -> list[dict]:
    os.environ["KUBEHA_LAB_ID"] = LAB_ID
    lab = Lab()
    found = []
    try:
        lab.up(LabSpec(layout=layout))
        inventory = lab.paths.inventory
        with tempfile.TemporaryDirectory(prefix="kubeha-availability-") as state:
            journal = Path(state) / "journal.sqlite"
            for name, arguments in operations(load_inventory(inventory).cluster):
                before, started = operation_count(journal), time.monotonic()
                done = subprocess.run([sys.executable, "-m", "kubeha.cli", *arguments, "-i", str(inventory),
                                       "--journal", str(journal), "--yes"],
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True)
                result = {"operation": name, "exit": done.returncode,
                          "command_seconds": round(time.monotonic() - started, 1),
                          **(probe_of(journal) if operation_count(journal) > before else {})}
                print(json.dumps({k: v for k, v in result.items() if k != "paths"}), flush=True)
                found.append(result)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
                    break
    finally:
        lab.down()
    return found


def kind_cell(kinds: dict, kind: str) -> str:
    """A table cell for one path kind: failed first attempts (failed after the retry), the worst longest gap."""
    k = kinds.get(kind)
    return "—" if k is None else f"{k['failures']} ({k['failures_after_retry']}), {k['longest_gap_ms']:.0f} ms"


def markdown_rows(runs: list[list[dict]]) -> list[str]:
    """One table row per operation of each run: the operation's wall time (the whole
    command's: planning, connecting, the probe's start and end), then per path kind the
    failed first attempts (failed after the retry) and the worst longest gap."""
    rows = []
    for number, run in enumerate(runs, 1):
        for r in run:
            kinds = r.get("by_kind", {})
            lost = r.get("etcd_writes_lost")
            rows.append(f"| {number} | {r['operation']} | {r.get('wall_seconds', '—')} ({r['command_seconds']}) | "
                        f"{kind_cell(kinds, 'vip')} | "
                        f"{kind_cell(kinds, 'lb')} | {kind_cell(kinds, 'node-proxy')} | "
                        f"{'?' if lost is None else lost} of {kinds.get('etcd-writes', {}).get('requests', 0)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--layout", default="kubeadm", choices=[layout.value for layout in Layout])
    args = parser.parse_args()
    runs = [measure(Layout(args.layout)) for _ in range(args.runs)]
    result = {
        **provenance(),
        "command": f"bench/availability.py --runs {args.runs} --layout {args.layout}", "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | operation | operation (command) s | VIP: failed (after retry), longest gap | LB hosts "
          "| node-local proxies "
          "| etcd writes lost |")
    print("\n".join(markdown_rows(runs)))


if __name__ == "__main__":
    main()
