"""`kubeha plan change-endpoint` and `kubeha change-endpoint`: the API endpoint moved to a new VIP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kubeha.cli.nodes import BatchOption, BudgetOption, TimeoutOption
from kubeha.cli.operations import (
    FormatOption, InventoryOption, JournalOption, JsonFlag, NoProbeOption, OutOption, PlanFormat, VerifyFlag,
    YesOption, plan_command, run_now,
)
from kubeha.operations.endpoint_plan import OPERATION
from kubeha.operations.nodes_plan import DEFAULT_FAILURE_BUDGET, DEFAULT_NODE_TIMEOUT, DEFAULT_WORKER_BATCH

VipOption = Annotated[str, typer.Option("--vip", help="The new VIP: an unused address of the LB hosts' subnet.")]
PortOption = Annotated[int | None, typer.Option("--port", help="The new VIP's port (default: the current one).")]
VridOption = Annotated[int | None, typer.Option("--vrid", help="The new VIP's VRRP router id (default: the next "
                                                "one free after the current VIP's).")]
RetireSanFlag = Annotated[bool, typer.Option("--retire-san", help="At the end, take the old VIP out of every "
                                             "apiserver cert too (one more restart per master).")]


def _arguments(vip: str, port: int | None, vrid: int | None, retire_san: bool, batch: int, failure_budget: int,
               node_timeout: int) -> dict[str, str]:
    arguments = {"vip": vip, "batch": str(batch), "failure_budget": str(failure_budget),
                 "node_timeout": str(node_timeout)}
    if port is not None:
        arguments["port"] = str(port)
    if vrid is not None:
        arguments["vrid"] = str(vrid)
    if retire_san:
        arguments["retire_san"] = "true"
    return arguments


def plan_change_endpoint(vip: VipOption, port: PortOption = None, vrid: VridOption = None,
                         retire_san: RetireSanFlag = False, batch: BatchOption = DEFAULT_WORKER_BATCH,
                         failure_budget: BudgetOption = DEFAULT_FAILURE_BUDGET,
                         node_timeout: TimeoutOption = DEFAULT_NODE_TIMEOUT,
                         inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                         fmt: FormatOption = PlanFormat.TEXT, json_output: JsonFlag = False,
                         out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan moving the API endpoint to a new VIP: served beside the old one, the apiserver
    certs reissued with it (masters one at a time, out of the load balancers while they
    restart), every consumer repointed (nodes as `repoint-nodes` does it), then the old VIP
    retired. Changes nothing.

    Examples:

      kubeha plan change-endpoint --vip 10.0.0.200

      kubeha plan change-endpoint --vip 10.0.0.200 --port 6443 --retire-san --format markdown
    """
    plan_command(OPERATION, _arguments(vip, port, vrid, retire_san, batch, failure_budget, node_timeout), inventory,
                 journal, fmt, json_output, out_file, verify)


def change_endpoint(vip: VipOption, port: PortOption = None, vrid: VridOption = None, retire_san: RetireSanFlag = False,
                    batch: BatchOption = DEFAULT_WORKER_BATCH, failure_budget: BudgetOption = DEFAULT_FAILURE_BUDGET,
                    node_timeout: TimeoutOption = DEFAULT_NODE_TIMEOUT, inventory: InventoryOption = Path("cluster.yaml"),
                    journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None,
                    yes: YesOption = False, no_probe: NoProbeOption = False) -> None:
    """Move the API endpoint to a new VIP without a failed request: plan, show, confirm,
    apply with the probe.

    Examples:

      kubeha change-endpoint --vip 10.0.0.200 -i cluster.yaml
    """
    run_now(OPERATION, _arguments(vip, port, vrid, retire_san, batch, failure_budget, node_timeout), inventory,
            journal, fmt, out_file, yes, no_probe)
