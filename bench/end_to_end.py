"""Benchmark: end-to-end wall time of migrate-masters (3 -> 3) and change-endpoint in the lab,
and where that time goes (step kinds: waiting for etcd, for readiness, load-balancer changes,
restarts), with the probe's numbers beside it.

Target (issue: benchmarks): migrate-masters under 3 minutes.

    sudo .venv/bin/python bench/end_to_end.py [--runs 3] [--layout kubeadm]
    .venv/bin/python bench/end_to_end.py --from-journal kubeha-demo/journal.sqlite   # a demo already run

Each run is `kubeha demo` on a lab of its own (KUBEHA_LAB_ID=7), removed at the end.
Writes bench/results/end_to_end.json; BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from kubeha.plan import Journal
from kubeha.report import probe_totals
from provenance import provenance

RESULTS = Path(__file__).parent / "results" / "end_to_end.json"
BENCH_LAB_ID = "7"


def operation_times(journal_path: Path) -> list[dict]:
    """Per operation in the journal: wall time (first run's start to last run's end), seconds
    per step kind (largest first), the five slowest steps, the probe's totals."""
    found = []
    with Journal(journal_path) as journal:
        for operation_id in journal.operation_ids():
            plan, runs, steps = journal.plan(operation_id), journal.runs(operation_id), journal.steps(operation_id)
            if not runs or runs[-1].finished is None:
                continue
            kind_of = {s.id: s.kind for s in plan.steps}
            by_kind: dict[str, float] = {}
            took = []
            for s in steps:
                if s.finished is not None:
                    seconds = (s.finished - s.started).total_seconds()
                    by_kind[kind_of[s.step_id]] = by_kind.get(kind_of[s.step_id], 0.0) + seconds
                    took.append((seconds, s.step_id))
            found.append({
                "operation": plan.operation, "operation_id": operation_id, "steps": len(plan.steps),
                "outcome": runs[-1].outcome.value if runs[-1].outcome else None,
                "wall_seconds": round((runs[-1].finished - runs[0].started).total_seconds(), 1),
                "seconds_by_step_kind": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
                "slowest_steps": [{"step": step, "seconds": round(sec, 1)} for sec, step in sorted(took)[-5:][::-1]],
                "probe": asdict(probe_totals(p.summary for p in journal.probes(operation_id))),
            })
    return found


def run_demo(layout: str) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="kubeha-bench-") as state:
        env = {**os.environ, "KUBEHA_LAB_ID": BENCH_LAB_ID}
        try:
            subprocess.run([sys.executable, "-m", "kubeha.cli", "demo", "--layout", layout, "--state-dir", state],
                           env=env, check=True, stdin=subprocess.DEVNULL)
        finally:
            subprocess.run([sys.executable, "-m", "kubeha.cli", "lab", "down"], env=env, check=False,
                           capture_output=True)
        return operation_times(Path(state) / "journal.sqlite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--layout", default="kubeadm", choices=["kubeadm", "kubeasz"])
    parser.add_argument("--from-journal", type=Path, help="summarise a journal a demo left instead of running one")
    args = parser.parse_args()
    if args.from_journal:
        runs, command = [operation_times(args.from_journal)], f"bench/end_to_end.py --from-journal (a demo, {args.layout})"
    else:
        runs, command = [run_demo(args.layout) for _ in range(args.runs)], f"bench/end_to_end.py --runs {args.runs}"
    operations = sorted({o["operation"] for run in runs for o in run})
    result = {
        **provenance(),
        "command": command, "layout": args.layout, "runs": runs,
        "median_wall_seconds": {op: statistics.median(o["wall_seconds"] for run in runs for o in run
                                                      if o["operation"] == op) for op in operations},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_wall_seconds"], indent=2))


if __name__ == "__main__":
    main()
