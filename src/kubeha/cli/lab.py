"""`kubeha lab`: a multi-host HA control plane on this machine, for trying kubeha and testing it."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Network
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kubeha.errors import InputError
from kubeha.lab import Lab, LabSpec
from kubeha.model import Layout

app = typer.Typer(help="Build, inspect and remove the lab (needs root). Set KUBEHA_LAB_ID=N to run "
                       "lab N beside the default one.", no_args_is_help=True)
out = Console()


def _lab() -> Lab:
    return Lab(log=lambda msg: out.print(f"[dim]·[/dim] {msg}", highlight=False))


def _subnet(value: str) -> IPv4Network:
    try:
        return IPv4Network(value)
    except ValueError as e:
        raise InputError(f"--subnet {value!r} is not a network like 10.212.0.0/24") from e


@app.command()
def up(
    masters: Annotated[int, typer.Option(help="Masters (each runs etcd, the control plane, haproxy, keepalived).")] = 3,
    spares: Annotated[int, typer.Option(help="Spare hosts running only sshd: the new machines of a migration.")] = 3,
    workers: Annotated[int, typer.Option(help="Workers (kubelet and a node-local nginx apiserver proxy).")] = 3,
    layout: Annotated[Layout, typer.Option(help="kubeadm (static pods) or kubeasz (systemd units).")] = Layout.KUBEADM,
    lb: Annotated[bool, typer.Option("--lb/--no-lb", help="Build the VIP and load balancers "
                                     "(--no-lb: clients use the first master, for trying 'kubeha lb apply').")] = True,
    subnet: Annotated[str | None, typer.Option(
        help="Private subnet of the lab bridge (default: 10.212.<KUBEHA_LAB_ID or 0>.0/24).")] = None,
) -> None:
    """Build the lab; a stale lab from a crashed run is removed first.

    Example: kubeha lab up --layout kubeasz --masters 3 --workers 2
    """
    spec = LabSpec(masters=masters, spares=spares, workers=workers, layout=layout, with_lb=lb,
                   subnet=_subnet(subnet) if subnet else None)
    lab = _lab()
    lab.up(spec)
    _print_status(lab.status())


@app.command()
def status(json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the lab's hosts, services, VIP holder, nodes and memory.

    Examples: kubeha lab status;  kubeha lab status --json | jq .vip_holders
    """
    state = _lab().status()
    if json_output:
        print(json.dumps(state, indent=2))
    else:
        _print_status(state)


@app.command()
def down() -> None:
    """Remove the lab: processes, namespaces, bridge, mounts and files.

    Examples: kubeha lab down;  KUBEHA_LAB_ID=2 kubeha lab down
    """
    _lab().down()
    out.print("lab removed")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(ctx: typer.Context, host: Annotated[str, typer.Argument(help="Lab host name, e.g. master1.")]) -> None:
    """Open a shell on a lab host over SSH (or run a command on it).

    Examples: kubeha lab ssh master1;  kubeha lab ssh master1 -- "systemctl status keepalived"
    """
    cmd = _lab().ssh_command(host, list(ctx.args))
    os.execvp(cmd[0], cmd)


def _print_status(state: dict) -> None:
    table = Table(title=f"kubeha lab ({state['layout']} layout) — API {state['endpoint']}")
    for col in ("host", "address", "roles", "sshd", "services", "node"):
        table.add_column(col)
    for h in state["hosts"]:
        services = " ".join(
            f"[green]{u}[/green]" if s == "active" else f"[red]{u}:{s}[/red]"
            for u, s in h["services"].items())
        if h["static_pods"]:
            services += " [dim](static pods: " + ", ".join(h["static_pods"]) + ")[/dim]"
        node = state["nodes"].get(h["name"])
        table.add_row(h["name"], h["address"], ",".join(h["roles"]),
                      "up" if h["sshd"] else "[red]down[/red]", services,
                      "" if node is None else ("Ready" if node else "[red]NotReady[/red]"))
    out.print(table)
    holders = state["vip_holders"]
    out.print(f"VIP holder: {', '.join(holders) or '[red]none[/red]'}   "
              f"processes: {state['processes']}   memory (PSS): {state['memory_mib']} MiB")
    out.print(f"kubectl --kubeconfig {state['admin_kubeconfig']} get nodes")
