"""`kubeha inventory`: discover, import and show cluster.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kubeha.discover import discover_inventory
from kubeha.errors import InputError
from kubeha.inventory import Inventory, dump_inventory, import_kubeasz, import_kubespray, load_inventory
from kubeha.inventory.cluster_yaml import read_yaml
from kubeha.inventory.document import inventory_document

app = typer.Typer(help="Write cluster.yaml (discover it from a master, or import an ansible "
                       "inventory) and show it.", no_args_is_help=True)
import_app = typer.Typer(help="Import a kubeasz or kubespray ansible inventory as cluster.yaml.",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")
out = Console()
err = Console(stderr=True)

Output = Annotated[Path | None, typer.Option("-o", "--output", help="Write cluster.yaml here "
                                             "(default: print it).")]
Force = Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it: {e}") from None


def _emit(inventory: Inventory, output: Path | None, force: bool) -> None:
    """cluster.yaml to ``output`` (or stdout); the importer's notes and warnings to stderr."""
    for line in (*inventory.notes, *inventory.warnings()):
        err.print(f"[yellow]note:[/yellow] {line}", highlight=False)
    text = dump_inventory(inventory)
    if output is None:
        print(text, end="")
        return
    if output.exists() and not force:
        raise InputError(f"{output} exists: pass --force to replace it, or choose another -o")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"{output}: cannot write it: {e}") from None
    err.print(f"wrote {output}: {len(inventory.cluster.hosts)} hosts, endpoint {inventory.cluster.endpoint}",
              highlight=False)


@app.command()
def discover(
    target: Annotated[str, typer.Argument(help="A master: [USER@]ADDRESS (user default root).")],
    output: Output = None,
    force: Force = False,
    ssh_key: Annotated[Path | None, typer.Option("--ssh-key", help="Private key to log in with "
                                                 "(default: the SSH agent and ~/.ssh keys).")] = None,
    known_hosts: Annotated[Path | None, typer.Option("--known-hosts", help="known_hosts file "
                                                     "(default: ~/.ssh/known_hosts).")] = None,
    trust_new_host_keys: Annotated[bool, typer.Option("--trust-new-host-keys", help="Trust and "
                                   "record the keys of hosts known_hosts does not list yet.")] = False,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="SSH port of every host.")] = 22,
    tunnel: Annotated[bool, typer.Option("--tunnel", help="Reach etcd and the API through SSH "
                                         "tunnels even when they look reachable.")] = False,
) -> None:
    """Learn the whole control plane from one master over SSH and write cluster.yaml.

    It reads the master's manifests or units, etcd's member list, the Nodes, keepalived,
    haproxy and a worker's nginx. Nothing is changed on any host.

    Examples:

      kubeha inventory discover root@10.0.0.11 -o cluster.yaml

      kubeha inventory discover admin@master1 --ssh-key ~/.ssh/ops --known-hosts ./known_hosts
    """
    inventory = discover_inventory(target, port=port, key_file=ssh_key, known_hosts=known_hosts,
                                   trust_new_host_keys=trust_new_host_keys, prefer_tunnel=tunnel)
    _emit(inventory, output, force)


@import_app.command("kubeasz")
def import_kubeasz_command(
    hosts_file: Annotated[Path, typer.Argument(help="kubeasz's clusters/<name>/hosts file.")],
    output: Output = None,
    force: Force = False,
) -> None:
    """Import a kubeasz hosts file (1.x to 3.x).

    Example: kubeha inventory import kubeasz /etc/kubeasz/clusters/k8s-01/hosts -o cluster.yaml
    """
    _emit(import_kubeasz(_read(hosts_file), str(hosts_file)), output, force)


@import_app.command("kubespray")
def import_kubespray_command(
    inventory_file: Annotated[Path, typer.Argument(help="inventory.ini or hosts.yaml.")],
    group_vars: Annotated[list[Path] | None, typer.Option(
        "--group-vars", help="A group_vars YAML file (all.yml, k8s_cluster.yml); repeat it, "
                             "later files win.")] = None,
    output: Output = None,
    force: Force = False,
) -> None:
    """Import a kubespray inventory with its group_vars.

    Example: kubeha inventory import kubespray inventory/prod/inventory.ini
    --group-vars inventory/prod/group_vars/all/all.yml
    --group-vars inventory/prod/group_vars/k8s_cluster/k8s-cluster.yml -o cluster.yaml
    """
    merged: dict[str, Any] = {}
    for path in group_vars or []:
        data = read_yaml(_read(path), str(path))
        if data is not None and not isinstance(data, dict):
            raise InputError(f"{path}: group_vars must be a mapping of variables")
        merged.update(data or {})
    sources = ", ".join(map(str, group_vars or [])) or "group_vars"
    inventory = import_kubespray(_read(inventory_file), str(inventory_file),
                                 group_vars=merged or None, group_vars_source=sources)
    _emit(inventory, output, force)


@app.command()
def show(
    inventory_file: Annotated[Path, typer.Option("-i", "--inventory", help="cluster.yaml to show.")]
    = Path("cluster.yaml"),
    json_output: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
) -> None:
    """Check cluster.yaml and show it: every problem is reported with its line.

    Examples: kubeha inventory show;  kubeha inventory show -i prod.yaml --json
    """
    inventory = load_inventory(inventory_file)
    if json_output:
        print(json.dumps(inventory_document(inventory), indent=2))
        return
    cluster = inventory.cluster
    table = Table(title=f"{cluster.name} ({cluster.layout.value} layout, etcd {cluster.etcd_topology.value}) "
                        f"— API {cluster.endpoint}")
    for column in ("host", "address", "roles", "node", "ssh"):
        table.add_column(column)
    for host in cluster.hosts:
        table.add_row(host.name, str(host.address), ",".join(sorted(r.value for r in host.roles)),
                      host.kube_node_name, f"{host.ssh_user} (port {host.ssh_port})")
    out.print(table)
    proxy = f"node-local proxy {cluster.node_local_endpoint}" if cluster.node_local_proxy else "no node-local proxy"
    out.print(f"VIPs: {', '.join(f'{v.address}:{v.port} ({v.interface}, vrid {v.vrid})' for v in cluster.vips) or 'none'}"
              f"; {proxy}; Kubernetes {cluster.kubernetes_version}", highlight=False)
    for line in inventory.warnings():
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
