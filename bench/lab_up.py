"""Benchmark: how long `kubeha lab up` takes and how much memory the lab uses.

Target (issue: the lab): 3 masters + 3 spares + 3 workers ready in under 60 s with under
2 GB of memory on a 2-core machine, both layouts.

    sudo .venv/bin/python bench/lab_up.py [--runs 3]

Writes bench/results/lab_up.json; BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from kubeha.lab import Lab, LabSpec
from kubeha.model import Layout
from provenance import provenance

RESULTS = Path(__file__).parent / "results" / "lab_up.json"


def measure(layout: Layout) -> dict:
    lab = Lab()
    started = time.monotonic()
    try:
        lab.up(LabSpec(layout=layout))
        up = time.monotonic() - started
        time.sleep(15)  # let start-up transients settle before reading memory
        status = lab.status()
        return {"up_seconds": round(up, 2), "memory_mib": status["memory_mib"],
                "processes": status["processes"]}
    finally:
        down_started = time.monotonic()
        lab.down()
        print(f"  down in {time.monotonic() - down_started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for layout in Layout:
        runs = []
        for i in range(args.runs):
            runs.append(measure(layout))
            print(f"{layout.value} run {i + 1}: {runs[-1]}")
        results[layout.value] = {
            "runs": runs,
            "median_up_seconds": statistics.median(r["up_seconds"] for r in runs),
            "median_memory_mib": statistics.median(r["memory_mib"] for r in runs),
        }
    record = {
        "benchmark": "lab_up", **provenance(),
        "command": "bench/lab_up.py --runs %d" % args.runs,
        "spec": "3 masters, 3 spares, 3 workers", "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: (v["median_up_seconds"], v["median_memory_mib"]) for k, v in results.items()}))


if __name__ == "__main__":
    main()
