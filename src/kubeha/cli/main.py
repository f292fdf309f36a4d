"""The `kubeha` command: thin typer commands over the library."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from kubeha.cli import audit, check, demo, endpoint, inventory, lab, lb, nodes, operations, probe, report
from kubeha.errors import KubehaError

app = typer.Typer(
    name="kubeha",
    help="Plan, check and change the highly available control plane of a self-managed "
         "Kubernetes cluster: VIP, load balancers, etcd and masters, without downtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.add_typer(lab.app, name="lab")
app.add_typer(inventory.app, name="inventory")
app.add_typer(lb.app, name="lb")
app.command("check")(check.check)
app.command("probe")(probe.probe)
app.add_typer(operations.plan_app, name="plan")
app.command("apply")(operations.apply)
app.command("resume")(operations.resume)
app.command("rollback")(operations.rollback)
app.command("journal")(operations.journal_command)
app.command("report")(report.report)
app.command("audit")(audit.audit_command)
app.add_typer(operations.etcd_app, name="etcd")
operations.plan_app.command("repoint-nodes")(nodes.plan_repoint_nodes)
app.command("repoint-nodes")(nodes.repoint_nodes)
operations.plan_app.command("change-endpoint")(endpoint.plan_change_endpoint)
app.command("change-endpoint")(endpoint.change_endpoint)
app.command("rolling-restart")(operations.rolling_restart)
app.command("add-master")(operations.add_master)
app.command("remove-master")(operations.remove_master)
app.command("migrate-masters")(operations.migrate_masters)

err = Console(stderr=True)


def main() -> None:
    try:
        app()
    except KubehaError as e:
        # one line however long (soft_wrap), the message as it is (no markup read in it)
        err.print(Text.assemble(Text("error:", style="red"), f" {e}"), soft_wrap=True, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
