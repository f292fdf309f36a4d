"""`repoint-nodes`: the kubelet and kube-proxy kubeconfigs of nodes moved to a new server URL.

The plan comes from ``nodes_plan`` (pure); this module reads the cluster (the nodes'
kubeconfigs, the Nodes and their Leases through the API), holds the step kinds, the view
and safety checks, and the operation. A node counts as repointed when both kubeconfigs name
the server, the running kubelet started after they last changed, and its Node is Ready, so
a resume after a crash at any point finds what is left to do on the cluster.

Proof that a new kubeconfig works is the kubelet's Lease: a renewal written after the
kubelet was stopped (both times on the node's own clock, so clock skew between the
operator and the cluster does not matter) comes from the new process, which reached the
API through the new server.
"""

from __future__ import annotations

import shlex
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from kubernetes import client as k8s

from kubeha.access import ClusterAccess
from kubeha.errors import HostError, InputError, KubehaError
from kubeha.etcd.errors import EtcdError
from kubeha.hosts import BackupSet
from kubeha.hosts import HostConnection
from kubeha.hosts.facts import Fact, gather_fact
from kubeha.inventory import Inventory
from kubeha.kube import KubeError, configmap_value, restart_daemonset, set_configmap_value
from kubeha.kube import NODE_LEASE_NAMESPACE, lease_renewed, node_ready
from kubeha.model import Cluster, Host
from kubeha.operations.base import Operation, refuse_input
from kubeha.operations.calico import RepointCalico, read_calico_config
from kubeha.operations.nodes_plan import (
    KUBE_PROXY_CONFIGMAP, KUBE_PROXY_KEY, KUBE_PROXY_NAMESPACE, OPERATION, SERVER_SERVED, WITHIN_BUDGET, NodeFiles,
    RepointFacts, RepointRequest, budget_reason, chosen_nodes, failed_nodes, is_loopback, node_hosts, parse_request,
    repoint_plan, targets,
)
from kubeha.plan import Plan, Registry, Step, StepContext, StepKind, StepNotVerified, ViewFactory
from kubeha.plan import inventory_digest, new_operation_id
from kubeha.render.kubeconfig import kubeconfig_servers, rewrite_kubeconfig_server

_POLL = 0.5

_apis: weakref.WeakKeyDictionary[ClusterAccess, tuple[str, k8s.ApiClient]] = weakref.WeakKeyDictionary()


def kube_api(access: ClusterAccess) -> k8s.ApiClient:
    """One API client per access for every read of a run, through the cluster's endpoint
    (a new one when the inventory names a new endpoint: `change-endpoint`)."""
    endpoint = access.cluster.endpoint
    if access not in _apis or _apis[access][0] != endpoint:
        _apis[access] = (endpoint, access.kube())
    return _apis[access][1]


class NodeNotRepointed(KubehaError):
    """A node did not come back on the new server and was put back; the failure budget is spent."""


# ---- reading the nodes ------------------------------------------------------------------------


def _kubelet_age_fact(cluster: Cluster) -> Fact[tuple[int, ...] | None]:
    """Seconds since the running kubelet started, then since each kubeconfig last changed; None
    when no kubelet runs. (``ps`` and ``stat`` on the node: one clock.)"""
    p = cluster.paths
    # a kubelet whose age cannot be read prints "-": not a number, so not current; ps -q reads
    # that one process (ps -p reads all of /proc: ~30 ms of CPU on a node with 1000 processes)
    command = ('pid=$(systemctl show -p MainPID --value kubelet 2>/dev/null); '
               '[ -n "$pid" ] && [ "$pid" != 0 ] || exit 0; now=$(date +%s); '
               'age=$(ps -q "$pid" -o etimes= | tr -d " "); printf "%s" "${age:--}"; '
               f'for f in {shlex.quote(str(p.kubelet_kubeconfig))} {shlex.quote(str(p.kube_proxy_kubeconfig))}; do '
               '[ -e "$f" ] && printf " %s" $((now - $(stat -c %Y "$f"))); done; echo')
    return Fact("kubelet's age and its kubeconfigs' ages", ["sh", "-c", command], _parse_ages)


def _parse_ages(stdout: str) -> tuple[int, ...] | None:
    words = stdout.split()
    return tuple(int(w) for w in words) if words and all(w.isdigit() for w in words) else None


def _node_files(ages: tuple[int, ...] | None, kubelet: bytes | None, kube_proxy: bytes | None) -> NodeFiles:
    # started no earlier than the newest change (whole seconds: "no earlier" errs towards done,
    # and an old kubelet is minutes older than a file kubeha just wrote)
    current = ages is not None and (len(ages) == 1 or ages[0] <= min(ages[1:]))
    return NodeFiles(kubelet=None if kubelet is None else tuple(kubeconfig_servers(kubelet.decode())),
                     kube_proxy=None if kube_proxy is None else tuple(kubeconfig_servers(kube_proxy.decode())),
                     kubelet_current=current)


def read_nodes_files(access: ClusterAccess, hosts: Iterable[Host]) -> tuple[dict[str, NodeFiles], dict[str, str]]:
    """Each host's kubeconfigs (read on all hosts at once), and why the others could not be read."""
    cluster = access.cluster
    p = cluster.paths

    async def read(conn: HostConnection) -> NodeFiles:
        ages = await gather_fact(conn, _kubelet_age_fact(cluster))
        kubelet, kube_proxy = await conn.get_files([p.kubelet_kubeconfig, p.kube_proxy_kubeconfig])
        try:
            return _node_files(ages, kubelet, kube_proxy)
        except InputError as e:  # a kubeconfig kubeha cannot read: that host's problem, said with its name
            raise HostError(f"{conn.name}: a kubeconfig: {e}") from None

    found: dict[str, NodeFiles] = {}
    errors: dict[str, str] = {}
    for name, outcome in access.run_all(read, hosts=list(hosts)).items():
        if outcome.value is not None:
            found[name] = outcome.value
        else:
            errors[name] = str(outcome.error)
    return found, errors




class ServerCheck:
    """Whether a server URL answers /readyz with 200 where the nodes reach it: from here, or
    for a node-local URL (127.0.0.1) on each node, through its SSH connection. Tunnels are
    opened once per host and kept for the run."""

    def __init__(self, access: ClusterAccess) -> None:
        self.access = access
        self._tunnels: dict[tuple[str, int], int] = {}

    def _ask(self, url: str, where: str) -> str | None:
        try:
            with self.access.http(url) as http:
                status = http.get("/readyz").status_code
        except Exception as e:  # any failure to get an answer is the reason, said in one line
            return f"GET /readyz {where} failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return None if status == 200 else f"GET /readyz {where} answered HTTP {status}"

    def reason(self, url: str, hosts: Iterable[Host]) -> str | None:
        if not is_loopback(url):
            return self._ask(url, f"at {url}")
        port = int(url.rsplit(":", 1)[1])
        for host in hosts:
            key = (host.name, port)
            if key not in self._tunnels:
                self._tunnels[key] = self.access.loopback_port(host, port)
            why = self._ask(f"https://127.0.0.1:{self._tunnels[key]}", f"on {host.name} at {url}")
            if why:
                return why
        return None


# ---- the view and the checks ------------------------------------------------------------------


class NodesView:
    """One look at the nodes: each host's kubeconfigs and each Node's readiness, read when asked."""

    def __init__(self, access: ClusterAccess, servers: ServerCheck) -> None:
        self.access = access
        self.cluster = access.cluster
        self.servers = servers
        self._files: dict[str, NodeFiles | None] = {}
        self._ready: dict[str, bool] = {}

    def files(self, name: str) -> NodeFiles | None:
        """None when the host cannot be read."""
        return self.files_of([name])[name]

    def files_of(self, names: Iterable[str]) -> dict[str, NodeFiles | None]:
        wanted = list(names)
        missing = [self.cluster.host(n) for n in wanted if n not in self._files]
        if missing:
            found, _ = read_nodes_files(self.access, missing)
            self._files.update({h.name: found.get(h.name) for h in missing})
        return {n: self._files[n] for n in wanted}

    def ready(self, node: str) -> bool:
        if node not in self._ready:
            self._ready[node] = node_ready(kube_api(self.access), node)
        return self._ready[node]

    def repointed(self, host: str, node: str, server: str) -> bool:
        files = self.files(host)
        return files is not None and files.names(server) and files.kubelet_current and self.ready(node)


def nodes_view_factory(access: ClusterAccess) -> ViewFactory:
    servers = ServerCheck(access)
    return lambda: NodesView(access, servers)


def _earlier(step: Step) -> list[str]:
    """The hosts of the batches before ``step``."""
    return [str(name) for name in step.arguments.get("earlier") or []]  # type: ignore[union-attr]


def _budget(step: Step) -> int:
    return int(step.arguments.get("budget") or 0)  # type: ignore[arg-type]


def within_budget(view: NodesView, step: Step) -> str | None:
    earlier = _earlier(step)
    return budget_reason(failed_nodes(view.files_of(earlier), earlier, str(step.arguments["server"])), _budget(step))


def server_served(view: NodesView, step: Step) -> str | None:
    return view.servers.reason(str(step.arguments["server"]), [view.cluster.host(h) for h in step.hosts])


registry = Registry()
registry.step_check(WITHIN_BUDGET)(within_budget)
registry.step_check(SERVER_SERVED)(server_served)


# ---- acting on nodes --------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNode:
    host: Host
    node: str  # the Node (and Lease) name


def _batch(ctx: StepContext) -> list[BatchNode]:
    cluster: Cluster = ctx.cluster.cluster
    return [BatchNode(cluster.host(str(n["host"])), str(n["node"]))  # type: ignore[index]
            for n in ctx.step.arguments["nodes"]]  # type: ignore[union-attr]


def write_kubeconfigs(access: ClusterAccess, hosts: Sequence[Host], server: str,
                      backup: BackupSet) -> dict[str, str]:
    """On every host at once: both kubeconfigs (where they exist) naming ``server``, each backed
    up first. Why it failed, by host name."""
    p = access.cluster.paths

    async def write(conn: HostConnection) -> None:
        paths = [p.kubelet_kubeconfig, p.kube_proxy_kubeconfig]
        changed: dict[PurePosixPath, tuple[bytes, int | None]] = {}
        for path, content in zip(paths, await conn.get_files(paths)):
            if content is None:
                continue
            text = content.decode()
            if (new := rewrite_kubeconfig_server(text, server)) != text:
                changed[path] = (new.encode(), None)  # None: the mode it has
        if changed:
            await conn.put_files(changed, backup=backup)

    outcomes = access.run_all(write, hosts=hosts)
    return {name: f"writing its kubeconfigs failed: {o.error}" for name, o in outcomes.items() if o.error is not None}


# the kubelet stopped, the node's clock read, the kubelet started: a Lease renewal later than that
# time is the new process's; kube-proxy, where a unit runs it, restarted too
_RESTART = ("systemctl stop kubelet && date +%s.%N && systemctl start kubelet && "
            "if systemctl is-active kube-proxy >/dev/null 2>&1; then systemctl restart kube-proxy; fi")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def restart_and_wait(access: ClusterAccess, nodes: Sequence[BatchNode], timeout: float) -> dict[str, str]:
    """Restart the nodes' kubelets together and wait until each renews its Lease and is Ready;
    the causes of the nodes that did not, by host name."""
    if not nodes:
        return {}
    outcomes = access.run_all(["sh", "-c", _RESTART], hosts=[n.host for n in nodes])
    failed: dict[str, str] = {}
    stopped_at: dict[str, float] = {}
    for n in nodes:
        outcome = outcomes[n.host.name]
        said = outcome.value.stdout.split() if outcome.value is not None else []
        if outcome.error is not None or not said or not _is_number(said[0]):
            failed[n.host.name] = f"restarting its kubelet failed: {outcome.error or 'the node did not say when'}"
        else:
            stopped_at[n.host.name] = float(said[0])
    waiting = [n for n in nodes if n.host.name in stopped_at]
    api = kube_api(access)
    deadline = time.monotonic() + timeout
    last_error: dict[str, str] = {}
    while waiting:
        for n in list(waiting):
            try:
                renewed = lease_renewed(api, n.node)
                if renewed is not None and renewed > stopped_at[n.host.name] and node_ready(api, n.node):
                    waiting.remove(n)
            except KubeError as e:
                last_error[n.host.name] = str(e)
        if not waiting:
            break
        if time.monotonic() > deadline:
            for n in waiting:
                seen = f" (last API error: {last_error[n.host.name]})" if n.host.name in last_error else ""
                failed[n.host.name] = (f"its kubelet did not renew Lease {NODE_LEASE_NAMESPACE}/{n.node} with the Node "
                                       f"Ready within {timeout:.0f} s of the restart{seen}")
            break
        time.sleep(_POLL)
    return failed


def put_back(access: ClusterAccess, nodes: Sequence[BatchNode], backup: BackupSet, timeout: float) -> dict[str, str]:
    """Restore the nodes' kubeconfigs from ``backup`` and restart their kubelets; what failed."""
    outcomes = access.run_all(lambda conn: conn.restore(backup), hosts=[n.host for n in nodes])
    failed = {n.host.name: f"restoring its kubeconfigs failed: {outcomes[n.host.name].error}" for n in nodes
              if outcomes[n.host.name].error is not None}
    failed.update(restart_and_wait(access, [n for n in nodes if n.host.name not in failed], timeout))
    return failed


class RepointNodeBatch(StepKind):
    """Arguments: ``server``, ``nodes`` ([{host, node}]), ``earlier`` (hosts of the batches
    before), ``budget`` (nodes that may fail in all), ``timeout`` (seconds per restart)."""

    name = "node-kubeconfig-server"

    def _server(self, ctx: StepContext) -> str:
        return str(ctx.step.arguments["server"])

    def _timeout(self, ctx: StepContext) -> float:
        return float(ctx.step.arguments["timeout"])  # type: ignore[arg-type]

    def is_done(self, ctx: StepContext) -> bool:
        view: NodesView = ctx.view
        # the budget check then judges the earlier batches on this same view: read them at once
        view.files_of([*_earlier(ctx.step), *(n.host.name for n in _batch(ctx))])
        return all(view.repointed(n.host.name, n.node, self._server(ctx)) for n in _batch(ctx))

    def apply(self, ctx: StepContext) -> None:
        access: ClusterAccess = ctx.cluster
        view: NodesView = ctx.view
        server, backup = self._server(ctx), ctx.step_backup_set
        batch = _batch(ctx)
        view.files_of(n.host.name for n in batch)
        todo = [n for n in batch if not view.repointed(n.host.name, n.node, server)]
        for n in todo:
            ctx.took_backup(n.host.name, backup)
        failed = write_kubeconfigs(access, [n.host for n in todo], server, backup)
        failed.update(restart_and_wait(access, [n for n in todo if n.host.name not in failed], self._timeout(ctx)))
        if not failed:
            return
        # each node that did not come back is put back at once, whatever the budget says
        unrecovered = put_back(access, [n for n in todo if n.host.name in failed], backup, self._timeout(ctx))
        earlier, budget = _earlier(ctx.step), _budget(ctx.step)
        spent = len(failed_nodes(view.files_of(earlier), earlier, server)) + len(failed)
        if unrecovered or spent > budget:
            said = "; ".join(f"{host}: {cause}, " + (f"and putting it back failed: {unrecovered[host]}"
                                                       if host in unrecovered else "put back on its old kubeconfigs")
                             for host, cause in failed.items())
            raise NodeNotRepointed(f"{said} (failure budget {budget}: {spent} node(s) failed)")

    def verify(self, ctx: StepContext) -> None:
        view: NodesView = ctx.view
        server = self._server(ctx)
        batch = _batch(ctx)
        names = _earlier(ctx.step) + [n.host.name for n in batch]
        view.files_of(names)
        broken = [n.host.name for n in batch if (f := view.files(n.host.name)) is not None and f.names(server)
                  and not view.repointed(n.host.name, n.node, server)]
        if broken:
            raise StepNotVerified(f"{', '.join(broken)}: the kubeconfigs name {server} but the Node is not Ready "
                                  "or the kubelet has not restarted on them")
        reason = budget_reason(failed_nodes(view.files_of(names), names, server), _budget(ctx.step))
        if reason:
            raise StepNotVerified(reason)

    def rollback(self, ctx: StepContext) -> None:
        view: NodesView = ctx.view
        server = self._server(ctx)
        view.files_of(n.host.name for n in _batch(ctx))
        # a node put back already (its files restored and its kubelet restarted since) is left alone
        changed = [n for n in _batch(ctx) if (f := view.files(n.host.name)) is None or f.names(server)
                   or not f.kubelet_current]
        failed = put_back(ctx.cluster, changed, ctx.step_backup_set, self._timeout(ctx))
        if failed:
            raise NodeNotRepointed("; ".join(f"{host}: {cause}" for host, cause in failed.items()))


def kube_proxy_servers(access: ClusterAccess) -> tuple[str, ...] | None:
    """The servers kube-system/kube-proxy's kubeconfig names; None when it has none."""
    text = configmap_value(kube_api(access), KUBE_PROXY_NAMESPACE, KUBE_PROXY_CONFIGMAP, KUBE_PROXY_KEY)
    return None if text is None else tuple(kubeconfig_servers(text))


def _set_configmap_server(api: k8s.ApiClient, server: str) -> None:
    text = configmap_value(api, KUBE_PROXY_NAMESPACE, KUBE_PROXY_CONFIGMAP, KUBE_PROXY_KEY)
    if text is None:
        raise KubehaError(f"ConfigMap {KUBE_PROXY_NAMESPACE}/{KUBE_PROXY_CONFIGMAP} has no {KUBE_PROXY_KEY} any more")
    set_configmap_value(api, KUBE_PROXY_NAMESPACE, KUBE_PROXY_CONFIGMAP, KUBE_PROXY_KEY,
                        rewrite_kubeconfig_server(text, server))
    restart_daemonset(api, KUBE_PROXY_NAMESPACE, "kube-proxy", datetime.now(timezone.utc).isoformat())


class RepointKubeProxyConfigMap(StepKind):
    """Arguments: ``server``, ``previous`` (the servers before)."""

    name = "kube-proxy-configmap-server"

    def is_done(self, ctx: StepContext) -> bool:
        return set(kube_proxy_servers(ctx.cluster) or ()) == {str(ctx.step.arguments["server"])}

    def apply(self, ctx: StepContext) -> None:
        _set_configmap_server(kube_api(ctx.cluster), str(ctx.step.arguments["server"]))

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"ConfigMap {KUBE_PROXY_NAMESPACE}/{KUBE_PROXY_CONFIGMAP} does not name "
                                  f"{ctx.step.arguments['server']}")

    def rollback(self, ctx: StepContext) -> None:
        previous = [str(s) for s in ctx.step.arguments.get("previous") or []]  # type: ignore[union-attr]
        if previous:
            _set_configmap_server(kube_api(ctx.cluster), previous[0])


for _kind in (RepointNodeBatch(), RepointKubeProxyConfigMap(), RepointCalico()):
    registry.add_kind(_kind)


# ---- reading what planning needs, and the operation --------------------------------------------


def read_facts(access: ClusterAccess, request: RepointRequest) -> RepointFacts:
    cluster = access.cluster
    nodes, unread = read_nodes_files(access, [h for h in node_hosts(cluster) if h.name not in access.connect_errors])
    unreachable = {name: str(e) for name, e in access.connect_errors.items()} | unread
    facts = RepointFacts(nodes=nodes, unreachable=unreachable)
    picked, _ = targets(cluster, request, facts)
    not_served = ServerCheck(access).reason(request.server, picked)
    configmap = kube_proxy_servers(access)
    calico = read_calico_config(access) if request.etcd else None
    etcd_not_served = None
    if request.etcd:
        try:
            access.etcd_at(request.etcd).member_list()
        except (EtcdError, KubehaError) as e:
            etcd_not_served = f"the etcd endpoints {','.join(request.etcd)} do not answer: {e}"
    return RepointFacts(nodes=nodes, unreachable=unreachable, not_served=not_served, kube_proxy_configmap=configmap,
                        calico_endpoints=calico.endpoints if calico else None,
                        calico_configmap=bool(calico and calico.configmap), calico_hosts=tuple(calico.files) if calico else (),
                        etcd_not_served=etcd_not_served)


class RepointNodes(Operation):
    """``server``; optional ``etcd``, ``hosts``, ``batch``, ``failure_budget``, ``node_timeout``."""

    name = OPERATION
    registry = registry

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        refuse_input(self.name, chosen_nodes(inventory.cluster, parse_request(arguments))[1])

    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        request = parse_request(arguments)
        facts = read_facts(access, request)
        return repoint_plan(operation_id=new_operation_id(self.name), arguments=arguments, cluster=inventory.cluster,
                            request=request, facts=facts, inventory_digest=inventory_digest(inventory_path.read_text()),
                            now=datetime.now(timezone.utc))

    def view_factory(self, access: ClusterAccess, plan: Plan) -> ViewFactory:
        return nodes_view_factory(access)


OPERATIONS: tuple[Operation, ...] = (RepointNodes(),)
