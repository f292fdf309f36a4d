"""`kubeha audit OPERATION_ID`: a real run's journal played through the plan simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kubeha.cli.operations import InventoryOption, JournalOption, JsonFlag, journal_path_of, operation_id_argument
from kubeha.inventory import load_inventory
from kubeha.operations.audit import audit
from kubeha.plan import Journal
from kubeha.report import known_operation

out = Console(highlight=False)


def audit_command(
    operation_id: Annotated[str, typer.Argument(help="The operation's id (`kubeha journal` lists them).")],
    inventory: InventoryOption = Path("cluster.yaml"),
    journal: JournalOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Compare what a run saw before each step with what the plan simulator predicted.

    Before each step it carries out, `kubeha apply` (and resume) stores what its fresh look
    saw: etcd's voters, learners and healthy members, and, where the step's checks read
    them, the apiservers in every load balancer and the VIP's holder. The audit plays the
    plan through the simulator (`kubeha plan ... --verify`) and names the first step where
    the cluster was not what the model says the steps before it leave. No host is asked;
    the inventory only maps addresses to host names. Exit status 1 on a divergence.

    Examples:

      kubeha audit migrate-masters-20261203-103713-0cb9 -i cluster.yaml

      kubeha audit etcd-migrate-20261203-090000-ab12 --json
    """
    journal_path = journal_path_of(journal)
    cluster = load_inventory(inventory).cluster
    with Journal(journal_path) as opened:
        known_operation(opened, operation_id_argument(operation_id))
        result = audit(opened.plan(operation_id), cluster, opened.steps(operation_id),
                       opened.observations(operation_id))
    if json_output:
        typer.echo(json.dumps({
            "operation_id": operation_id, "compared": result.compared, "stopped_at": result.stopped_at,
            "divergence": None if result.divergence is None else {
                "step": result.divergence.step, "differences": list(result.divergence.differences)},
        }, indent=2))
    else:
        out.print(f"{operation_id}: {result.describe()}", soft_wrap=True)
    if result.divergence is not None:
        raise typer.Exit(1)
