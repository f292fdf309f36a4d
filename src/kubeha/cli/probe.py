"""`kubeha probe`: measure the API's availability through every path clients use."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kubeha.access import ClusterAccess
from kubeha.errors import InputError
from kubeha.inventory import load_inventory
from kubeha.probe import Probe, ProbeSummary, new_run_id

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """``50ms``, ``1.5s``, ``2m``, ``1h`` (a bare number is seconds) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None or float(match[1]) <= 0:
        raise InputError(f"{text!r} is not a duration like 50ms, 30s or 2m")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _wait(run_for: float | None) -> None:
    """``run_for`` seconds; None: until Ctrl-C. Sleeps in short slices: Python runs a signal's
    handler only in the main thread, and a SIGINT the kernel gives one of the probe's threads
    does not wake a main thread asleep (Ctrl-C then waited for the sleep's end)."""
    deadline = math.inf if run_for is None else time.monotonic() + run_for
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.2, left))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_table(summary: ProbeSummary, targets: dict[str, str]) -> Table:
    table = Table(title=f"probe: {summary.ended - summary.started:.1f} s")
    for column in ("path", "target", "requests", "failures", "after 1 retry", "longest gap ms",
                   "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("path", "target") else "right")
    for p in summary.paths:
        style = "red" if p.failures_after_retry else ("yellow" if p.failures else None)
        table.add_row(p.path, targets.get(p.path, ""), str(p.requests), str(p.failures),
                      str(p.failures_after_retry), _ms(p.longest_gap_ms), _ms(p.p50_ms), _ms(p.p99_ms),
                      style=style)
    return table


def probe(
    inventory: Annotated[Path, typer.Option("-i", "--inventory", help="The cluster's cluster.yaml.")]
    = Path("cluster.yaml"),
    duration: Annotated[str | None, typer.Option("--duration", help="How long, e.g. 30s or 5m; "
                                                 "default: until Ctrl-C.")] = None,
    interval: Annotated[str, typer.Option("--interval", help="Time between requests on each path.")] = "50ms",
    node_proxies: Annotated[bool, typer.Option("--node-proxies", help="Also each worker's node-local "
                                               "proxy, through an SSH forward to its 127.0.0.1.")] = False,
    etcd_writes: Annotated[bool, typer.Option("--etcd-writes", help="Also put numbered etcd keys and "
                                              "check at the end that none acknowledged was lost.")] = False,
    keep_alive: Annotated[bool, typer.Option("--keep-alive", help="Reuse one connection per path "
                                             "(default: a new connection per request, as a "
                                             "restarting client).")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Directory for probe.jsonl (every "
                                                 "request) and summary.json; default: "
                                                 "./kubeha-probe-<run id>.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (the timeline "
                                              "still goes to --out).")] = False,
) -> None:
    """Read the API every interval through the VIP and each LB host (and the node-local
    proxies), each path on its own; a failed request is retried once at once. Prints per
    path: requests, failures, failures even after one retry, the longest time without a
    success and the latency. Exits 1 if a request failed after its retry or a write was lost.

    Examples:

      kubeha probe -i cluster.yaml --duration 30s --node-proxies --etcd-writes

      kubeha probe -i cluster.yaml --interval 100ms --out /tmp/probe

      kubeha probe -i cluster.yaml --duration 1m --json | jq '.paths[] | select(.failures > 0)'
    """
    run_for = seconds(duration) if duration is not None else None
    every = seconds(interval)
    loaded = load_inventory(inventory)
    run_id = new_run_id()
    directory = out_dir or Path(f"kubeha-probe-{run_id}")
    with ClusterAccess(loaded) as access:
        runner = Probe(access, interval=every, node_proxies=node_proxies, etcd_writes=etcd_writes,
                       keep_alive=keep_alive, timeline=directory / "probe.jsonl", run_id=run_id)
        with runner:
            (err if json_output else out).print(f"probing {len(runner.paths)} paths every {every * 1000:g} ms"
                      + (f" for {duration}" if duration else " until Ctrl-C") + f"; timeline: {runner.timeline}")
            try:
                _wait(run_for)
            except KeyboardInterrupt:
                out.print("stopping")
    summary = runner.stop()  # stopped already by the with block: its summary
    (directory / "summary.json").write_text(json.dumps(summary.as_json(), indent=2) + "\n")
    if json_output:
        print(json.dumps(probe_json(summary, {p.name: p.target for p in runner.paths}), indent=2))
    else:
        print_probe_summary(summary, {p.name: p.target for p in runner.paths})
    if not summary.healthy:
        raise typer.Exit(1)


def probe_json(summary: ProbeSummary, targets: Mapping[str, str]) -> dict[str, Any]:
    """The summary as the journal stores it: with ``healthy`` and each path's target."""
    return {**summary.as_json(), "healthy": summary.healthy, "targets": dict(targets)}


def print_probe_summary(summary: ProbeSummary, targets: Mapping[str, str]) -> None:
    out.print(summary_table(summary, dict(targets)))
    if summary.etcd is not None:
        e = summary.etcd
        lost = "not checked: etcd could not be read back" if e.lost is None else str(len(e.lost))
        out.print(f"etcd writes: {e.writes}, acknowledged {e.acknowledged}, lost {lost}"
                  + (f" (numbers {', '.join(map(str, e.lost[:20]))})" if e.lost else ""))
