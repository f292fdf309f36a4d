"""`kubeha plan repoint-nodes` and `kubeha repoint-nodes`: the nodes' kubeconfigs moved to a new server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kubeha.cli.operations import (
    FormatOption, InventoryOption, JournalOption, JsonFlag, NoProbeOption, OutOption, PlanFormat, YesOption,
    plan_command, run_now,
)
from kubeha.operations.nodes_plan import (
    DEFAULT_FAILURE_BUDGET, DEFAULT_NODE_TIMEOUT, DEFAULT_WORKER_BATCH, OPERATION, parse_request,
)

ServerOption = Annotated[str, typer.Option("--server", help="The URL the kubelets and kube-proxies should use: "
                                           "https://HOST:PORT (the VIP endpoint, or a node-local proxy such as "
                                           "https://127.0.0.1:6443). Must answer /readyz where the nodes reach it.")]
EtcdOption = Annotated[str | None, typer.Option("--etcd", help="Also point calico (calico-config and every "
                                                "calicoctl.cfg) at these etcd client URLs: URL,URL,...")]
HostsOption = Annotated[str | None, typer.Option("--hosts", help="Only these nodes (host names of cluster.yaml): "
                                                 "H,H. Default: every master and worker that does not name "
                                                 "--server yet.")]
BatchOption = Annotated[int, typer.Option("--batch", min=1, help="Workers restarted together (masters always go "
                                          "one at a time, first).")]
BudgetOption = Annotated[int, typer.Option("--failure-budget", min=0, help="Nodes that may fail (each is put back "
                                           "at once) before the run stops.")]
TimeoutOption = Annotated[int, typer.Option("--node-timeout", min=1, help="Seconds a restarted kubelet may take "
                                            "to renew its Lease through the new server before its node is put back.")]


def _arguments(server: str, etcd: str | None, hosts: str | None, batch: int, failure_budget: int,
               node_timeout: int) -> dict[str, str]:
    arguments = {"server": server, "batch": str(batch), "failure_budget": str(failure_budget),
                 "node_timeout": str(node_timeout)}
    if etcd:
        arguments["etcd"] = etcd
    if hosts:
        arguments["hosts"] = hosts
    parse_request(arguments)  # a bad URL is refused before SSH connects to any host
    return arguments


def plan_repoint_nodes(server: ServerOption, etcd: EtcdOption = None, hosts: HostsOption = None,
                       batch: BatchOption = DEFAULT_WORKER_BATCH, failure_budget: BudgetOption = DEFAULT_FAILURE_BUDGET,
                       node_timeout: TimeoutOption = DEFAULT_NODE_TIMEOUT,
                       inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                       fmt: FormatOption = PlanFormat.TEXT, json_output: JsonFlag = False,
                       out_file: OutOption = None) -> None:
    """Plan pointing the nodes' kubelet and kube-proxy kubeconfigs at a new server: per node
    back up, rewrite, restart the kubelet, prove it renews its Lease through the new server
    (else put the node back); masters one at a time, then workers in batches. Changes nothing.

    Examples:

      kubeha plan repoint-nodes --server https://10.0.0.10:8443 -i cluster.yaml

      kubeha plan repoint-nodes --server https://127.0.0.1:6443 --hosts w1,w2 --format markdown
    """
    plan_command(OPERATION, _arguments(server, etcd, hosts, batch, failure_budget, node_timeout), inventory,
                 journal, fmt, json_output, out_file)


def repoint_nodes(server: ServerOption, etcd: EtcdOption = None, hosts: HostsOption = None,
                  batch: BatchOption = DEFAULT_WORKER_BATCH, failure_budget: BudgetOption = DEFAULT_FAILURE_BUDGET,
                  node_timeout: TimeoutOption = DEFAULT_NODE_TIMEOUT,
                  inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                  fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None, yes: YesOption = False,
                  no_probe: NoProbeOption = False) -> None:
    """Point the nodes' kubelet and kube-proxy kubeconfigs at a new server without a NotReady
    Node: `kubeha plan repoint-nodes`, then (after you confirm) `kubeha apply`, with the probe.

    Examples:

      kubeha repoint-nodes --server https://10.0.0.10:8443 -i cluster.yaml

      kubeha repoint-nodes --server https://10.0.0.10:8443 --batch 10 --failure-budget 2 --yes
    """
    run_now(OPERATION, _arguments(server, etcd, hosts, batch, failure_budget, node_timeout), inventory, journal,
            fmt, out_file, yes, no_probe)


__all__ = ["plan_repoint_nodes", "repoint_nodes"]
