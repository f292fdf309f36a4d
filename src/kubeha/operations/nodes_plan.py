"""Planning `repoint-nodes`: pure, from the inventory, the request and one look at the cluster.

Each node's kubelet and kube-proxy read the API server's URL from a kubeconfig once, when
they start. Repointing a node is: back up both kubeconfigs, rewrite their ``server:``,
restart the kubelet (and a kube-proxy unit), and prove the new kubeconfig works: the Node
stays Ready and its kubelet renews its Lease after the restart. A node that fails is put
back at once (files restored, kubelet restarted).

Masters go first, one at a time (a master whose kubelet cannot reach the new server should
stop the run before any worker is touched), then workers in batches. The failure budget is
judged statelessly, from the files: a node of an earlier batch that does not name the new
server is one that failed and was put back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from kubeha.errors import InputError
from kubeha.model import Cluster, Host, Layout, Role
from kubeha.operations.calico import CONFIGMAP as CALICO_CONFIGMAP
from kubeha.operations.etcd_plan import EtcdFacts, calico_step, refuse_non_names
from kubeha.plan import Change, ChangeKind, Plan, PlanError, Step

OPERATION = "repoint-nodes"
# Safety checks named in plans; registered in kubeha.operations.nodes.
WITHIN_BUDGET = "nodes: the nodes of earlier batches that failed are within the failure budget"
SERVER_SERVED = "nodes: the new server answers /readyz"

DEFAULT_WORKER_BATCH = 5
DEFAULT_FAILURE_BUDGET = 0
# how long a restarted kubelet may take to renew its Lease through the new server
DEFAULT_NODE_TIMEOUT = 60

KUBE_PROXY_NAMESPACE, KUBE_PROXY_CONFIGMAP, KUBE_PROXY_KEY = "kube-system", "kube-proxy", "kubeconfig.conf"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class RepointRequest:
    server: str
    etcd: tuple[str, ...] = ()  # calico's new etcd endpoints; empty: calico is left alone
    hosts: tuple[str, ...] = ()  # empty: every node that does not name the server yet
    batch: int = DEFAULT_WORKER_BATCH
    failure_budget: int = DEFAULT_FAILURE_BUDGET
    node_timeout: int = DEFAULT_NODE_TIMEOUT


@dataclass(frozen=True)
class NodeFiles:
    """A node's kubeconfigs as its host has them."""

    kubelet: tuple[str, ...] | None  # the servers of the kubelet kubeconfig; None: no such file
    kube_proxy: tuple[str, ...] | None  # the same for kube-proxy's
    kubelet_current: bool = True  # the running kubelet started after its kubeconfigs last changed

    def names(self, server: str) -> bool:
        """Both kubeconfigs (those that exist) name ``server`` only."""
        return (bool(self.kubelet) and all(s == server for s in self.kubelet or ())
                and all(s == server for s in self.kube_proxy or ()))

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*(self.kubelet or ()), *(self.kube_proxy or ()))))


@dataclass(frozen=True)
class RepointFacts:
    """What planning needs from the live cluster, read once before planning."""

    nodes: Mapping[str, NodeFiles]  # host name -> its kubeconfigs (reachable master and worker hosts)
    unreachable: Mapping[str, str] = field(default_factory=dict)  # host -> why SSH failed
    not_served: str | None = None  # why the server does not answer /readyz where the nodes reach it
    kube_proxy_configmap: tuple[str, ...] | None = None  # servers of kube-system/kube-proxy; None: absent
    calico_endpoints: tuple[str, ...] | None = None  # calico on the etcd datastore: its endpoints
    calico_configmap: bool = False
    calico_hosts: tuple[str, ...] = ()
    etcd_not_served: str | None = None  # why the new etcd endpoints do not answer


# ---- the request ------------------------------------------------------------------------------


def parse_url(url: str, what: str) -> str:
    """``https://host:port`` (a trailing / dropped); InputError (one line) for anything else."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InputError(f"{what} {url!r} is not a URL: give https://HOST:PORT") from None
    if parts.scheme != "https" or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise InputError(f"{what} {url!r} must be https://HOST:PORT, nothing more (like https://10.0.0.10:8443)")
    return f"https://{parts.netloc}"


def _count(arguments: Mapping[str, str], name: str, default: int, low: int) -> int:
    text = arguments.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(str(text))
    except ValueError:
        value = low - 1
    if value < low:
        raise InputError(f"--{name.replace('_', '-')} must be a whole number of at least {low}, not {text!r}")
    return value


def parse_request(arguments: Mapping[str, str]) -> RepointRequest:
    """The operator's arguments, validated before any host is asked."""
    if not arguments.get("server"):
        raise InputError("--server is required: the URL the nodes should use, like https://10.0.0.10:8443")
    server = parse_url(arguments["server"], "--server")
    etcd = tuple(parse_url(u, "--etcd endpoint") for u in str(arguments.get("etcd") or "").split(",") if u.strip())
    hosts = tuple(dict.fromkeys(h.strip() for h in str(arguments.get("hosts") or "").split(",") if h.strip()))
    refuse_non_names(hosts)
    return RepointRequest(server=server, etcd=etcd, hosts=hosts,
                          batch=_count(arguments, "batch", DEFAULT_WORKER_BATCH, 1),
                          failure_budget=_count(arguments, "failure_budget", DEFAULT_FAILURE_BUDGET, 0),
                          node_timeout=_count(arguments, "node_timeout", DEFAULT_NODE_TIMEOUT, 1))


def is_loopback(url: str) -> bool:
    """A node-local URL (a node-local proxy): served on each node, not from the operator's machine."""
    return urlsplit(url).hostname in LOOPBACK_HOSTS


def node_hosts(cluster: Cluster) -> tuple[Host, ...]:
    """Hosts that run a kubelet: masters and workers."""
    return tuple(h for h in cluster.hosts if h.has(Role.MASTER) or h.has(Role.WORKER))


# ---- which nodes, in which batches ------------------------------------------------------------


def chosen_nodes(cluster: Cluster, request: RepointRequest) -> tuple[list[Host], list[str]]:
    """The nodes the request names (default: every node) and every reason a name is wrong:
    pure, so that a bad name is refused before any host is asked."""
    nodes = node_hosts(cluster)
    if not request.hosts:
        return list(nodes), []
    known = {h.name: h for h in cluster.hosts}
    chosen, reasons = [], []
    for name in request.hosts:
        host = known.get(name)
        if host is None:
            reasons.append(f"{name} is not a host of the inventory")
        elif host not in nodes:
            reasons.append(f"{name} is neither a master nor a worker: it runs no kubelet")
        else:
            chosen.append(host)
    return chosen, reasons


def targets(cluster: Cluster, request: RepointRequest, facts: RepointFacts) -> tuple[list[Host], list[str]]:
    """The nodes to repoint and every reason the request cannot be planned."""
    chosen, reasons = chosen_nodes(cluster, request)
    picked = []
    for host in chosen:
        if host.name in facts.unreachable:
            reasons.append(f"{host.name} is not reachable over SSH: {facts.unreachable[host.name]}")
            continue
        files = facts.nodes.get(host.name)
        if files is None or files.kubelet is None:
            if request.hosts:
                reasons.append(f"{host.name} has no kubelet kubeconfig at {cluster.paths.kubelet_kubeconfig}")
            continue
        if not files.kubelet:
            reasons.append(f"{host.name}: {cluster.paths.kubelet_kubeconfig} names no server")
            continue
        if not files.names(request.server) or not files.kubelet_current:
            picked.append(host)
    return picked, reasons


def batches(nodes: Sequence[Host], worker_batch: int) -> list[list[Host]]:
    """Masters one at a time first, then the other nodes ``worker_batch`` at a time."""
    masters = [[h] for h in nodes if h.has(Role.MASTER)]
    workers = [h for h in nodes if not h.has(Role.MASTER)]
    return masters + [workers[i:i + worker_batch] for i in range(0, len(workers), worker_batch)]


def failed_nodes(files: Mapping[str, NodeFiles | None], names: Sequence[str], server: str) -> list[str]:
    """Those of ``names`` whose kubeconfigs do not name ``server``: nodes that failed and were
    put back (or that a run never reached); a host that could not be read counts too."""
    return [name for name in names if (f := files.get(name)) is None or not f.names(server)]


def budget_reason(failed: Sequence[str], budget: int) -> str | None:
    if len(failed) > budget:
        return (f"{len(failed)} node(s) of earlier batches do not name the new server ({', '.join(failed)}), "
                f"more than the failure budget of {budget}: fix them and resume, or plan again with a "
                "larger --failure-budget")
    return None


# ---- the plan ---------------------------------------------------------------------------------


def _change(kind: ChangeKind, target: str, host: str | None, before: str | None, after: str | None) -> Change:
    return Change(kind=kind, target=target, host=host, before=before, after=after)


def _servers(servers: Sequence[str] | None) -> str | None:
    return None if servers is None else ",".join(servers) or "no server"


def _batch_step(cluster: Cluster, request: RepointRequest, facts: RepointFacts, batch: Sequence[Host],
                earlier: Sequence[str], step_id: str) -> Step:
    p = cluster.paths
    changes = []
    for host in batch:
        files = facts.nodes[host.name]
        changes.append(_change(ChangeKind.FILE, str(p.kubelet_kubeconfig), host.name, _servers(files.kubelet),
                               request.server))
        if files.kube_proxy is not None:
            changes.append(_change(ChangeKind.FILE, str(p.kube_proxy_kubeconfig), host.name,
                                   _servers(files.kube_proxy), request.server))
        changes.append(_change(ChangeKind.SERVICE, "kubelet (and a kube-proxy unit)", host.name, "running",
                               "restarted"))
    names = ", ".join(h.name for h in batch)
    return Step(
        id=step_id, kind="node-kubeconfig-server",
        title=f"Point the kubelet and kube-proxy of {names} at {request.server}", hosts=tuple(h.name for h in batch),
        changes=tuple(changes), safety_checks=(WITHIN_BUDGET, SERVER_SERVED),
        verification=("each Node is Ready and its kubelet renewed its Lease after the restart; a node that is not "
                      f"within {request.node_timeout} s is put back (its files restored, kubelet restarted)"),
        rollback="restore each node's kubeconfigs from this step's backup, restart its kubelet, wait for its Lease",
        estimated_seconds=10 + 5 * len(batch),
        arguments={"server": request.server, "nodes": [{"host": h.name, "node": h.kube_node_name} for h in batch],
                   "earlier": list(earlier), "budget": request.failure_budget, "timeout": request.node_timeout})


def configmap_step(server: str, previous: Sequence[str]) -> Step:
    target = f"ConfigMap {KUBE_PROXY_NAMESPACE}/{KUBE_PROXY_CONFIGMAP} {KUBE_PROXY_KEY}"
    return Step(
        id="repoint-kube-proxy-configmap", kind="kube-proxy-configmap-server",
        title=f"Point the kube-proxy ConfigMap at {server} and roll the kube-proxy DaemonSet",
        changes=(_change(ChangeKind.KUBE_OBJECT, target, None, ",".join(previous), server),
                 _change(ChangeKind.KUBE_OBJECT, f"DaemonSet {KUBE_PROXY_NAMESPACE}/kube-proxy", None, "running",
                         "restarted (where it exists)")),
        verification="the ConfigMap's kubeconfig names the new server",
        rollback="the old server written back, the DaemonSet rolled again", estimated_seconds=3,
        arguments={"server": server, "previous": list(previous)})


def refusals(cluster: Cluster, request: RepointRequest, facts: RepointFacts) -> list[str]:
    """Every reason, besides the choice of nodes, not to plan now."""
    reasons = []
    if facts.not_served:
        reasons.append(f"{request.server} is not served: {facts.not_served}")
    if request.etcd:
        if not facts.calico_endpoints:
            reasons.append(f"--etcd: calico keeps no etcd endpoints here (no {CALICO_CONFIGMAP} etcd_endpoints, "
                           "no calicoctl.cfg): leave --etcd out")
        if facts.etcd_not_served:
            reasons.append(f"--etcd: {facts.etcd_not_served}")
    return reasons


def repoint_plan(*, operation_id: str, arguments: Mapping[str, str], cluster: Cluster, request: RepointRequest,
                 facts: RepointFacts, inventory_digest: str, now: datetime) -> Plan:
    """The plan, or PlanError naming every reason it must not be made."""
    picked, reasons = targets(cluster, request, facts)
    reasons += refusals(cluster, request, facts)
    if reasons:
        raise PlanError(f"{OPERATION} refused: " + "; ".join(reasons))
    steps: list[Step] = []
    earlier: list[str] = []
    masters = 0
    for index, batch in enumerate(batches(picked, request.batch)):
        if batch[0].has(Role.MASTER):
            step_id = f"repoint-master-{batch[0].name}"
            masters += 1
        else:
            step_id = f"repoint-workers-{index - masters + 1}"
        steps.append(_batch_step(cluster, request, facts, batch, earlier, step_id))
        earlier = earlier + [h.name for h in batch]
    # kube-proxy pods read the ConfigMap: it may only name the server once every node uses it
    every_node_after = all(f.names(request.server) or name in earlier for name, f in facts.nodes.items()
                           if f.kubelet is not None)
    if cluster.layout is Layout.KUBEADM and facts.kube_proxy_configmap and every_node_after \
            and set(facts.kube_proxy_configmap) != {request.server}:
        steps.append(configmap_step(request.server, facts.kube_proxy_configmap))
    if request.etcd and facts.calico_endpoints and tuple(facts.calico_endpoints) != request.etcd:
        calico = EtcdFacts(members=(), leader_id=0, calico_endpoints=facts.calico_endpoints,
                           calico_configmap=facts.calico_configmap, calico_hosts=facts.calico_hosts)
        steps.append(calico_step(calico, facts.calico_endpoints, request.etcd, "repoint-calico"))
    if not steps:
        raise PlanError(f"{OPERATION}: nothing to do: every node (and the kube-proxy ConfigMap) names "
                        f"{request.server} already" + (" and calico has those etcd endpoints" if request.etcd else ""))
    return Plan.build(operation=OPERATION, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(steps))


__all__ = [
    "DEFAULT_FAILURE_BUDGET", "DEFAULT_NODE_TIMEOUT", "DEFAULT_WORKER_BATCH", "KUBE_PROXY_CONFIGMAP",
    "KUBE_PROXY_KEY", "KUBE_PROXY_NAMESPACE", "NodeFiles", "OPERATION", "RepointFacts", "RepointRequest",
    "SERVER_SERVED", "WITHIN_BUDGET", "batches", "budget_reason", "chosen_nodes", "configmap_step", "failed_nodes", "is_loopback", "node_hosts",
    "parse_request", "parse_url", "refusals", "repoint_plan", "targets",
]
