"""`kubeha check`: the health of the HA control plane, every problem on one line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kubeha.access import ClusterAccess
from kubeha.checks import CheckResult, Status, exit_code, gather_snapshot, run_checks, summary
from kubeha.inventory import load_inventory

out = Console()
STYLES = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


def print_check_table(results: list[CheckResult]) -> None:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("status", "check", "subject", "reason"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(f"[{STYLES[r.status]}]{r.status.value}[/]", r.name, r.subject, r.reason)
    out.print(table)


def check(
    inventory: Annotated[Path, typer.Option("-i", "--inventory", help="The cluster's cluster.yaml.")]
    = Path("cluster.yaml"),
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as a JSON list "
                                              "of {name, status, subject, reason}.")] = False,
    trust_new_host_keys: Annotated[bool, typer.Option("--trust-new-host-keys", help="Trust and "
                                   "record the keys of hosts known_hosts does not list yet.")] = False,
) -> None:
    """Check the HA control plane and list every problem found; change nothing.

    Over SSH and from here: SSH and sudo, clocks, disk for etcd, /etc/fstab, services;
    etcd health, quorum, leader, learners, versions, size and alarms; /readyz of each
    apiserver directly, through the VIP, through haproxy on each LB host and through each
    node-local proxy; one VIP holder; proxy backends are exactly the masters; every
    kubeconfig uses an HA endpoint; apiservers use live etcd members; certificates'
    expiry and the apiserver SANs. docs/check.md says why each matters.

    Exit status: 0 every check passed, 1 a check failed (or kubeha could not run),
    2 some checks warned and none failed.

    Examples:

      kubeha check -i cluster.yaml

      kubeha check -i cluster.yaml --json | jq '.[] | select(.status != "pass")'
    """
    loaded = load_inventory(inventory)
    started = time.monotonic()
    with ClusterAccess(loaded, trust_new_host_keys=trust_new_host_keys) as access:
        snapshot = gather_snapshot(access)
    results = run_checks(snapshot)
    if json_output:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print_check_table(results)
        out.print(f"{loaded.cluster.name}: {summary(results)} in {time.monotonic() - started:.1f} s",
                  highlight=False)
    raise typer.Exit(exit_code(results))
