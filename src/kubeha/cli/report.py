"""`kubeha report OPERATION_ID`: one self-contained HTML file on what an operation did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kubeha.access import ClusterAccess
from kubeha.checks import CheckResult, gather_snapshot, run_checks
from kubeha.cli.operations import InventoryOption, JournalOption, journal_path_of, write_private
from kubeha.errors import InputError, KubehaError
from kubeha.inventory import load_inventory
from kubeha.plan import Journal
from kubeha.report import known_operation, operation_report, render_report_html

out = Console(highlight=False)


def check_for_report(inventory_path: Path | None) -> tuple[list[CheckResult] | None, str | None]:
    """`kubeha check` of the cluster now, or why there is none (``inventory_path`` None: not asked)."""
    if inventory_path is None:
        return None, "--no-check"
    try:
        with ClusterAccess(load_inventory(inventory_path)) as access:
            return run_checks(gather_snapshot(access)), None
    except KubehaError as e:  # the report still says what the operation did
        return None, str(e)


def write_report(operation_id: str, journal_path: Path, checked: tuple[list[CheckResult] | None, str | None],
                 out_file: Path | None) -> Path:
    """Render the report with ``checked`` (from ``check_for_report``), write it 0600; its path."""
    checks, check_error = checked
    with Journal(journal_path) as journal:
        html = render_report_html(operation_report(journal, operation_id, checks=checks, check_error=check_error))
    target = out_file or journal_path.parent / "reports" / f"{operation_id}.html"
    try:
        write_private(target, html)
    except OSError as e:
        raise InputError(f"cannot write the report to {target}: {e.strerror}") from None
    return target


def report(
    operation_id: Annotated[str, typer.Argument(help="The operation's id (`kubeha journal` lists them).")],
    inventory: InventoryOption = Path("cluster.yaml"),
    journal: JournalOption = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report here; default "
                                                  "<journal dir>/reports/<operation id>.html.")] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Do not check the cluster for the report "
                                           "(no host is asked).")] = False,
) -> None:
    """Write an operation's report: one HTML file that opens anywhere, offline.

    The plan and its arguments; each step with its hosts, attempts, time taken and outcome;
    each run (apply, resume, rollback) with the availability probe: requests, failures and
    the longest gap per path, etcd write continuity, and a timeline plot of latency and
    failures with the step boundaries marked; `kubeha check` as the cluster is now; what
    every step backed up, on which host, where.

    Examples:

      kubeha report migrate-masters-20261203-103713-0cb9 -i cluster.yaml

      kubeha report migrate-masters-20261203-103713-0cb9 --no-check -o /tmp/report.html
    """
    journal_path = journal_path_of(journal)
    with Journal(journal_path) as opened:  # an unknown operation is refused before the check asks any host
        known_operation(opened, operation_id)
    written = write_report(operation_id, journal_path, check_for_report(None if no_check else inventory), out_file)
    out.print(f"report: {written}", soft_wrap=True)
