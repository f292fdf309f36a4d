"""`kubeha lb`: the VIP and the load balancers in front of the apiservers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kubeha.access import ClusterAccess
from kubeha.errors import InputError
from kubeha.inventory import load_inventory
from kubeha.lb import LbPlan, apply_lb_plan, lb_configs, read_lb_state

app = typer.Typer(help="The VIP and the load balancers: haproxy + keepalived on the LB hosts, "
                       "the node-local nginx on the nodes.", no_args_is_help=True)
out = Console(highlight=False)


def _print_plan(plan: LbPlan) -> None:
    for host, steps in plan.by_host().items():
        out.print(f"[bold]{host}[/bold]")
        for step in steps:
            out.print(f"  {step.describe()}", style=None if step.does_something else "dim")


@app.command()
def apply(
    inventory: Annotated[Path, typer.Option("-i", "--inventory", help="The cluster's cluster.yaml.")]
    = Path("cluster.yaml"),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change on each host; "
                                          "change nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="With --dry-run: print the steps as JSON, "
                                              "a list of {host, step, changes}.")] = False,
) -> None:
    """Install or update the VIP and load balancers: haproxy and keepalived on the LB hosts
    (the `lb` hosts, else the masters) and the node-local nginx on the nodes.

    New configs are tested by their own binary on each host first (a rejected one changes
    nothing), written atomically with a backup, and take effect by a start, or by a reload
    that drops no connection; keepalived starts with the highest priority first. A second
    run changes nothing. A failure restores the failing host's files and stops.

    Examples:

      kubeha lb apply -i cluster.yaml --dry-run

      kubeha lb apply -i cluster.yaml --yes

      kubeha lb apply -i cluster.yaml --dry-run --json | jq '.[] | select(.changes)'
    """
    if json_output and not dry_run:
        raise InputError("--json shows what would change: give --dry-run with it")
    loaded = load_inventory(inventory)
    cluster = loaded.cluster
    lb_configs(cluster)  # refuse a cluster without a VIP before connecting
    started = time.monotonic()
    with ClusterAccess(loaded) as access:
        state = read_lb_state(access, cluster)
        plan = state.plan(cluster)
        if json_output:
            print(json.dumps([{"host": host, "step": step.describe(), "changes": step.does_something}
                              for host, steps in plan.by_host().items() for step in steps], indent=2))
            return
        _print_plan(plan)
        if not plan.pending:
            out.print("no change: every config is current and every service runs")
            return
        if dry_run:
            out.print(f"dry run: {len(plan.pending)} steps would run; nothing was changed")
            return
        if not yes and not typer.confirm("apply these changes?"):
            raise typer.Exit(1)
        result = apply_lb_plan(access, plan, report=lambda line: out.print(f"[dim]·[/dim] {line}"))
    holders = ", ".join(result.vip_holders)
    out.print(f"applied {len(result.done)} steps in {time.monotonic() - started:.1f} s"
              + (f"; the VIP {cluster.vip.address} is on {holders}" if holders and cluster.vip else "")
              + f"; backups: operation {result.operation_id}")
