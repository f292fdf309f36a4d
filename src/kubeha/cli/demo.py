"""`kubeha demo`: the tour on a lab built for it: check, move every master to a new machine,
change the VIP, each planned, shown and applied with the probe; a report for each; the lab
removed at the end (``--keep`` keeps it)."""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.rule import Rule

from kubeha.access import ClusterAccess
from kubeha.checks import gather_snapshot, run_checks, summary
from kubeha.cli.check import print_check_table
from kubeha.cli.operations import make_plan, run_operation, verified
from kubeha.cli.report import check_for_report, write_report
from kubeha.errors import InputError
from kubeha.inventory import load_inventory
from kubeha.lab import Lab, LabSpec
from kubeha.model import Layout
from kubeha.operations import operation
from kubeha.plan import Journal, RunAction, plan_text
from kubeha.report import probe_totals

out = Console(highlight=False)
VIP_STEP = 50  # the new VIP: the lab's VIP + 50, inside the lab's own subnet


def _title(text: str) -> None:
    out.print()
    out.print(Rule(f"[bold]{text}[/bold]", align="left"))


def _operation(name: str, arguments: dict[str, str], inventory_path: Path, journal: Journal) -> str:
    """Plan ``name``, show the plan, apply it with the probe and live progress; its id."""
    plan, inventory = make_plan(name, arguments, inventory_path)
    out.print(plan_text(plan), end="")
    verified(plan, inventory, out, show=False)  # as `kubeha apply` does: the simulator first
    run_operation(RunAction.APPLY, plan, operation(name), inventory, journal, probe=True)
    return plan.operation_id


def _probe_line(journal: Journal, operation_id: str) -> str:
    t = probe_totals(p.summary for p in journal.probes(operation_id))
    gap = "none" if t.vip_longest_gap_ms is None else f"{t.vip_longest_gap_ms:.0f} ms"
    lost = "unknown" if t.etcd_writes_lost is None else t.etcd_writes_lost
    return (f"{t.requests} probe requests, {t.failed} failed ({t.failed_after_retry} after a retry), "
            f"longest gap through the VIP {gap}, etcd writes lost: {lost}")


def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the lab at the end (remove it with `kubeha lab down`).")]
    = False,
    layout: Annotated[Layout, typer.Option(help="kubeadm (static pods) or kubeasz (systemd units).")] = Layout.KUBEADM,
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Where the demo's journal, probe timelines and "
                                            "reports go (they outlive the lab).")] = Path("kubeha-demo"),
) -> None:
    """Build a lab (3 masters, 3 spares, 3 workers) and show kubeha on it, end to end.

    `kubeha check`; the plan for moving every master (etcd, control plane, LB, VIP) to a
    spare, applied with live progress and the availability probe; then the plan for moving
    the API to a new VIP, applied the same way; a summary, and an HTML report for each
    operation in --state-dir. Needs root (the lab makes network namespaces) and the Debian
    packages scripts/setup.sh installs. Takes about 6 minutes on 2 cores, the lab included.

    Examples:

      kubeha demo

      kubeha demo --keep --layout kubeasz --state-dir /tmp/demo
    """
    if os.geteuid() != 0:
        raise InputError("the demo builds a lab of network namespaces: run it as root (sudo kubeha demo)")
    lab = Lab(log=lambda msg: out.print(f"[dim]·[/dim] {msg}"))
    started = time.monotonic()
    _title("building the lab: 3 masters, 3 spares, 3 workers, a VIP")
    lab.up(LabSpec(masters=3, spares=3, workers=3, layout=layout))
    inventory_path = lab.paths.inventory
    try:
        inventory = load_inventory(inventory_path)
        cluster = inventory.cluster
        _title("kubeha check: the whole HA control plane, over SSH only")
        with ClusterAccess(inventory) as access:
            results = run_checks(gather_snapshot(access))
        print_check_table(results)
        out.print(f"{cluster.name}: {summary(results)}")

        done: list[tuple[str, str]] = []
        with Journal(state_dir / "journal.sqlite") as journal:
            pairs = [(m.name, s.name) for m, s in zip(cluster.masters, lab.topology().spares)]
            _title("migrate-masters: every master to a new machine, the API served all along")
            done.append(("migrate-masters", _operation(
                "migrate-masters", {"replace": ",".join(f"{m}={s}" for m, s in pairs)}, inventory_path, journal)))
            assert cluster.vip is not None  # the lab's cluster has one
            new_vip = str(IPv4Address(int(cluster.vip.address) + VIP_STEP))
            _title(f"change-endpoint: the API moves from VIP {cluster.vip.address} to {new_vip}")
            done.append(("change-endpoint", _operation("change-endpoint", {"vip": new_vip}, inventory_path, journal)))
            lines = [f"{name}: {_probe_line(journal, operation_id)}" for name, operation_id in done]
        checked = check_for_report(inventory_path)  # the cluster as both operations left it
        _title(f"summary ({(time.monotonic() - started) / 60:.1f} min)")
        for line, (_, operation_id) in zip(lines, done):
            out.print(line)
            out.print(f"  report: {write_report(operation_id, state_dir / 'journal.sqlite', checked, None)}")
    finally:
        if keep:
            out.print(f"the lab stays: kubeha lab status; kubectl --kubeconfig {lab.paths.admin_kubeconfig} "
                      "get nodes; kubeha lab down removes it")
        else:
            lab.down()
            out.print("lab removed")
