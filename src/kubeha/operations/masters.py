"""``add-master`` and ``remove-master``: a master joins or leaves without a failed request.

The plan comes from ``masters_plan`` (pure); the etcd member's steps are etcd's own
(``kubeha.operations.etcd``); the load-balancer moves are ``kubeha.lb``'s. The step kinds
here copy a master's files, start or stop its components and kubelet, and change what the
load balancers list. Each recognises its own effect, so a resumed run goes on from what
the cluster shows.
"""

from __future__ import annotations

import base64
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities, read_pair
from kubeha.discover.discover import component_file
from kubeha.errors import HostError, KubehaError
from kubeha.hosts import CommandFailed
from kubeha.hosts.facts import Fact
from kubeha.inventory import Inventory, dump_inventory
from kubeha.kube import (
    delete_node, kubeconfig_credentials, names_an_address, node_ready, objects_naming, patch_node, read_node,
)
from kubeha.lb.apply import VIP_TIMEOUT, apply_lb_plan, hand_over_vip, read_lb_state, vip_holding
from kubeha.lb.drain import backend_states, put_back, take_out, wait_ready
from kubeha.lb.plan import node_proxy_hosts
from kubeha.model import Cluster, Host, Role
from kubeha.operations import components, etcd_hosts
from kubeha.operations.base import Operation
from kubeha.operations.etcd import CHECKS, KINDS, EtcdMembershipOperation, read_facts
from kubeha.operations.etcd_plan import parse_pairs
from kubeha.operations.masters_plan import (
    COMPONENTS, READY_TIMEOUT, add_master_plan, master_change, migrate_masters_plan, migration_change, migration_pairs,
    remove_master_plan, retarget, roles_after_add, roles_after_remove, with_roles,
)
from kubeha.operations.etcd_view import ClusterView, cluster_view_factory, majority_while_down
from kubeha.operations.nodes import (
    NodesView, RepointKubeProxyConfigMap, RepointNodeBatch, ServerCheck, kube_proxy_servers, read_nodes_files,
    server_served, within_budget,
)
from kubeha.operations.nodes_plan import (
    SERVER_SERVED, WITHIN_BUDGET, RepointFacts, RepointRequest, node_hosts, repoint_plan,
)
from kubeha.operations.restart import RestartComponent
from kubeha.operations.restart_plan import MAJORITY_WHILE_DOWN
from kubeha.pki import SubjectAltNames, reissue
from kubeha.pki.cluster import CERT_MODE, KEY_MODE, client_cert, kubelet_identity
from kubeha.plan import Plan, PlanError, Registry, Step, StepContext, StepKind, StepNotVerified, ViewFactory
from kubeha.plan import default_journal_path, inventory_digest, new_operation_id
from kubeha.render import render_haproxy_cfg, render_kubeconfig
from kubeha.render.controlplane import render_kubelet
from kubeha.render.flags import replace_flag

_POLL = 0.5
# Node labels and taints a master's Node carries that the new one copies (the rest are the
# kubelet's own, or conditions)
_MASTER_LABEL_PREFIXES = ("node-role.kubernetes.io/", "node.kubernetes.io/exclude-from-external-load-balancers")
_CONDITION_TAINT_PREFIX = "node.kubernetes.io/"

registry = Registry()
for _name, _check in (*CHECKS, (MAJORITY_WHILE_DOWN, majority_while_down), (WITHIN_BUDGET, within_budget),
                      (SERVER_SERVED, server_served)):
    registry.step_check(_name)(_check)


class MasterView(ClusterView, NodesView):
    """One look at the cluster (etcd, load balancers, VIP) and at its nodes (kubeconfigs,
    Ready): a migration repoints the nodes that name an old master."""

    def __init__(self, look: ClusterView, access: ClusterAccess, servers: ServerCheck) -> None:
        ClusterView.__init__(self, look.cluster, look.etcd, look.read_backends, look.read_vip_holders)
        NodesView.__init__(self, access, servers)


def master_view_factory(access: ClusterAccess) -> ViewFactory:
    looks, servers = cluster_view_factory(access), ServerCheck(access)
    return lambda: MasterView(looks(), access, servers)


# ---- what the step kinds share ------------------------------------------------------------------


def step_access(ctx: StepContext) -> ClusterAccess:
    """The access the engine runs the step with."""
    return ctx.cluster


def step_host(ctx: StepContext) -> Host:
    """The host the step's ``host`` argument names, in the cluster as the inventory now has it."""
    return step_access(ctx).cluster.host(str(ctx.step.arguments["host"]))


def _after(ctx: StepContext) -> Cluster:
    """The cluster once the operation is done: the step's host with its new roles."""
    roles = ctx.step.arguments.get("roles") or []
    return with_roles(step_access(ctx).cluster, str(ctx.step.arguments["host"]), [str(r) for r in roles])  # type: ignore[union-attr]


def _source(ctx: StepContext) -> Host:
    return step_access(ctx).cluster.host(str(ctx.step.arguments["source"]))


def _backup(ctx: StepContext, host: Host | str) -> Any:
    backup = ctx.step_backup_set
    ctx.took_backup(host if isinstance(host, str) else host.name, backup)
    return backup


def _files_under(directory: PurePosixPath) -> Fact[list[PurePosixPath]]:
    return Fact(f"files under {directory}",
                ["sh", "-c", 'find "$1" -type f 2>/dev/null; true', "sh", str(directory)],
                lambda stdout: [PurePosixPath(line) for line in stdout.splitlines() if line])


# each file that exists: "<octal mode> <path>", then its content in base64 on one line
_READ_SCRIPT = """for f in "$@"; do
  [ -f "$f" ] || continue
  printf '%s %s\\n' "$(stat -c %a "$f")" "$f"
  base64 -w0 "$f"; echo
done"""


def _parse_files(stdout: str) -> dict[PurePosixPath, tuple[bytes, int]]:
    lines = stdout.splitlines()
    found = {}
    for header, body in zip(lines[::2], lines[1::2]):
        mode, _, path = header.partition(" ")
        found[PurePosixPath(path)] = (base64.b64decode(body), int(mode, 8))
    return found


def _read_files(access: ClusterAccess, host: Host, paths: Iterable[PurePosixPath]
                ) -> dict[PurePosixPath, tuple[bytes, int] | None]:
    """Each file's content and mode on ``host`` (None when absent), in one command."""
    wanted = list(dict.fromkeys(paths))
    found = access.fact(host, Fact(f"{len(wanted)} files", ["sh", "-c", _READ_SCRIPT, "sh", *map(str, wanted)],
                                   _parse_files))
    return {path: found.get(path) for path in wanted}


def _pki_files(access: ClusterAccess, cluster: Cluster, host: Host) -> list[PurePosixPath]:
    """Every file of the PKI directories on ``host``."""
    p = cluster.paths
    directories = (p.pki_dir,) if p.etcd_pki_dir.is_relative_to(p.pki_dir) else (p.pki_dir, p.etcd_pki_dir)
    return [path for d in directories for path in access.fact(host, _files_under(d))]


def _copy(access: ClusterAccess, source: Host, host: Host, path: PurePosixPath, backup: Any,
          change: Any = None) -> bool:
    """Copy ``path`` from ``source`` to ``host`` (with its mode), retargeted, through
    ``change`` when given; False when ``source`` has no such file."""
    found = _read_files(access, source, [path])[path]
    if found is None:
        return False
    content, mode = found
    text = retarget(content.decode(), source, host)
    if change is not None:
        text = change(text)
    access.put_file(host, path, text.encode(), mode=mode, backup=backup)
    return True


def _wait(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` (None when met, else why not) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        why = condition()
        if why is None:
            return
        if time.monotonic() > deadline:
            raise HostError(f"{what} within {timeout:.0f} s: {why}")
        time.sleep(_POLL)


# ---- step kinds -------------------------------------------------------------------------------


class CopyMasterFiles(StepKind):
    """The source master's PKI, kubeconfigs and kubelet files on the new host."""

    name = "master-files"

    def _paths(self, ctx: StepContext) -> list[PurePosixPath]:
        access, after, host = step_access(ctx), _after(ctx), step_host(ctx)
        p = access.cluster.paths
        return [p.ca.cert, p.apiserver.cert, p.admin_kubeconfig, p.kubelet_kubeconfig,
                *(f.path for f in render_kubelet(after, after.host(host.name)))]

    def is_done(self, ctx: StepContext) -> bool:
        access, host = step_access(ctx), step_host(ctx)
        return all(access.stat(host, path) is not None for path in self._paths(ctx))

    def apply(self, ctx: StepContext) -> None:
        access, host, source = step_access(ctx), step_host(ctx), _source(ctx)
        cluster, after = access.cluster, _after(ctx)
        p = cluster.paths
        backup = _backup(ctx, host)
        # the PKI but the certs that name the source: its apiserver's (issued anew below) and
        # its etcd member's (a joining member gets its own)
        own = {p.apiserver.cert, p.apiserver.key}
        own |= {p.etcd_server.cert, p.etcd_server.key, p.etcd_peer.cert, p.etcd_peer.key} - {
            p.etcd_client.cert, p.etcd_client.key}
        pki = [path for path in _pki_files(access, cluster, source) if path not in own]
        kubeconfigs = [p.admin_kubeconfig, p.controller_manager_kubeconfig, p.scheduler_kubeconfig]
        kubelet_files = render_kubelet(after, after.host(host.name))
        found = _read_files(access, source, [*pki, *kubeconfigs, p.kube_proxy_kubeconfig, p.kubelet_kubeconfig,
                                             *(f.path for f in kubelet_files)])
        # the node's clients name what the source's name, even the source itself: they run
        # before the new apiserver does (kubeadm's join does so too)
        files: dict[PurePosixPath, tuple[bytes, int | None]] = {
            path: pair for path in (*pki, p.kube_proxy_kubeconfig) if (pair := found[path]) is not None}
        auth = load_authorities(access, source)
        # the names of the source and of masters leaving with this operation are not the new one's
        gone = [source, *(cluster.host(str(n)) for n in ctx.step.arguments.get("leaving") or [])]  # type: ignore[union-attr]
        new = reissue(auth.ca, read_pair(access, source, p.apiserver),
                      add=SubjectAltNames(dns_names=(host.name,), ip_addresses=(host.address,)),
                      remove=SubjectAltNames(dns_names=tuple(h.name for h in gone),
                                             ip_addresses=tuple(h.address for h in gone)))
        files[p.apiserver.cert], files[p.apiserver.key] = (new.cert_pem, CERT_MODE), (new.key_pem, KEY_MODE)
        for path in kubeconfigs:
            if (pair := found[path]) is not None:
                files[path] = (retarget(pair[0].decode(), source, host).encode(), pair[1])
        kubelet = found[p.kubelet_kubeconfig]
        if kubelet is None:
            raise HostError(f"{source.name} has no {p.kubelet_kubeconfig} to take the kubelet's server from")
        server = kubeconfig_credentials(kubelet[0].decode(), f"{source.name}:{p.kubelet_kubeconfig}").server
        kc = client_cert(auth, kubelet_identity(host))
        text = render_kubeconfig(cluster_name=cluster.name, server=server,
                                 ca_pem=auth.ca.cert_pem, client_cert_pem=kc.cert_pem, client_key_pem=kc.key_pem,
                                 user=kubelet_identity(host)[0])
        files[p.kubelet_kubeconfig] = (text.encode(), KEY_MODE)
        for rendered in kubelet_files:  # as on the source; rendered where it has none
            pair = found[rendered.path]
            files[rendered.path] = ((retarget(pair[0].decode(), source, host).encode(), pair[1]) if pair
                                    else (rendered.content.encode(), rendered.mode))
        access.put_files(host, files, backup=backup)

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"{step_host(ctx).name} lacks a file of its master's set")

    def rollback(self, ctx: StepContext) -> None:
        step_access(ctx).restore(step_host(ctx), ctx.step_backup_set)


class HostFilesStep(StepKind):
    """A step that writes or removes files on the host its ``host`` argument names, each
    backed up in the step's set first: done when ``left`` finds nothing to change, undone by
    restoring the backup."""

    left_says = "still has"

    @abstractmethod
    def left(self, ctx: StepContext) -> list[str]:
        """The files the step has still to change."""

    def is_done(self, ctx: StepContext) -> bool:
        return not self.left(ctx)

    def verify(self, ctx: StepContext) -> None:
        left = self.left(ctx)
        if left:
            raise StepNotVerified(f"{step_host(ctx).name} {self.left_says} {', '.join(left[:3])}")

    def rollback(self, ctx: StepContext) -> None:
        step_access(ctx).restore(step_host(ctx), ctx.step_backup_set)


class RemoveMasterFiles(HostFilesStep):
    """A retired master's files gone (each kept in the step's backup on the host): its PKI,
    kubeconfigs, kubelet files, component manifests or units, and the load-balancer configs
    it no longer serves. Its CA keys must not outlive its role there."""

    name = "master-files-removed"

    def _paths(self, ctx: StepContext) -> list[PurePosixPath]:
        access, host, after = step_access(ctx), step_host(ctx), _after(ctx)
        cluster = access.cluster
        p = cluster.paths
        found = _pki_files(access, cluster, host)
        found += [p.admin_kubeconfig, p.controller_manager_kubeconfig, p.scheduler_kubeconfig, p.kube_proxy_kubeconfig,
                  p.kubelet_kubeconfig, *(f.path for f in render_kubelet(cluster, host)),
                  *(component_file(cluster.layout, c) for c in COMPONENTS)]
        if host.has(Role.ETCD) and not after.host(host.name).has(Role.ETCD):  # its member's unit, kept when stopped
            found.append(etcd_hosts.member_file(cluster, host))
        if cluster.vip is not None and host in cluster.lb_hosts and host not in after.lb_hosts:
            found += [p.haproxy_cfg, p.keepalived_conf]
        if host in node_proxy_hosts(cluster) and host not in node_proxy_hosts(after):
            found.append(p.node_proxy_conf)
        return [path for path, there in _read_files(access, host, found).items() if there is not None]

    def left(self, ctx: StepContext) -> list[str]:
        return [str(p) for p in self._paths(ctx)]

    def apply(self, ctx: StepContext) -> None:
        access, host = step_access(ctx), step_host(ctx)
        access.remove_files(host, self._paths(ctx), backup=_backup(ctx, host))



class LbServer(StepKind):
    """Every load balancer's config lists the masters after the step: a new one out of
    rotation (haproxy ``disabled``, nginx ``down``), a leaving one not at all."""

    name = "lb-server"

    def _adding(self, ctx: StepContext) -> bool:
        return Role.MASTER.value in (ctx.step.arguments.get("roles") or [])  # type: ignore[operator]

    def is_done(self, ctx: StepContext) -> bool:
        try:
            states = backend_states(step_access(ctx), _after(ctx))
        except HostError:  # a new LB host's haproxy does not run yet
            return False
        name = step_host(ctx).name
        listed = [name in servers for servers in (*states.haproxy.values(), *states.node_proxies.values())]
        return all(listed) if self._adding(ctx) else not any(listed)

    def apply(self, ctx: StepContext) -> None:
        access, host, after = step_access(ctx), step_host(ctx), _after(ctx)
        if not self._adding(ctx):  # a master that is an LB host stops being one first
            _stop_lb_services(ctx, host, access.cluster, after)
        configure_lbs(ctx, after, down={host.name} if self._adding(ctx) else set())

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"a load balancer {'lacks' if self._adding(ctx) else 'still lists'} "
                                  f"the apiserver of {step_host(ctx).name}")

    def rollback(self, ctx: StepContext) -> None:
        access, host = step_access(ctx), step_host(ctx)
        if self._adding(ctx):
            _stop_lb_services(ctx, host, _after(ctx), access.cluster)
            _stop_node_proxy(access, host, _after(ctx), access.cluster)
            access.restore(host, ctx.step_backup_set)  # the configs it got go too
        configure_lbs(ctx, access.cluster, down={host.name})


def _stop_lb_services(ctx: StepContext, host: Host, before: Cluster, after: Cluster) -> None:
    """Stop keepalived and haproxy on ``host`` when it is an LB host in ``before`` and not in
    ``after``. When it holds the VIP, the first LB host staying takes it over first (make
    before break); keepalived then stops (waited for until another host holds the VIP), then
    haproxy."""
    if before.vip is None or host not in before.lb_hosts or host in after.lb_hosts:
        return
    access = step_access(ctx)
    heir = next((h for h in after.lb_hosts if h in before.lb_hosts), None)
    if heir is not None and _held(access, before).get(host.name):
        ctx.took_backup(heir.name, ctx.step_backup_set)
        hand_over_vip(access, before, heir, ctx.step_backup_set)
    access.run(host, ["systemctl", "disable", "--now", "keepalived"], check=True)
    _wait(lambda: None if [h for h, held in _held(access, after).items() if held and h != host.name]
          else "no other host holds it", VIP_TIMEOUT, f"the VIP did not move off {host.name}")
    access.run(host, ["systemctl", "disable", "--now", "haproxy"], check=True)


def _leaves_node_proxy(host: Host, before: Cluster, after: Cluster) -> bool:
    return host in node_proxy_hosts(before) and host not in node_proxy_hosts(after)


def _stop_node_proxy(access: ClusterAccess, host: Host, before: Cluster, after: Cluster) -> None:
    """Stop the node-local nginx on ``host`` when it runs one in ``before`` and not in ``after``."""
    if _leaves_node_proxy(host, before, after):
        access.run(host, ["systemctl", "disable", "--now", "nginx"], check=True)


def _held(access: ClusterAccess, cluster: Cluster) -> dict[str, bool]:
    assert cluster.vip is not None
    return {h: bool(o.value) for h, o in vip_holding(access, cluster.vip).items() if o.ok}


def configure_lbs(ctx: StepContext, cluster: Cluster, down: set[str]) -> None:
    """Every LB config rendered for ``cluster`` (``down``: apiservers out of rotation),
    written where it differs and its service reloaded or started, each file backed up in the step's set."""
    access = step_access(ctx)
    state = read_lb_state(access, cluster)
    plan = state.plan(cluster, down)
    for config in {c.config.host.name for c in plan.pending}:
        ctx.took_backup(config, ctx.step_backup_set)
    apply_lb_plan(access, plan, operation_id=ctx.step_backup_set.operation_id)


class LbRotation(StepKind):
    """The apiserver into every load balancer once ready (and haproxy.cfg without
    ``disabled``), or out of every one."""

    name = "lb-rotation"

    def _into(self, ctx: StepContext) -> bool:
        return bool(ctx.step.arguments.get("into"))

    def _cluster(self, ctx: StepContext) -> Cluster:
        # a master being added is one only in the cluster after; one leaving is one before
        return _after(ctx) if self._into(ctx) else step_access(ctx).cluster

    def is_done(self, ctx: StepContext) -> bool:
        states = backend_states(step_access(ctx), self._cluster(ctx))
        name = step_host(ctx).name
        return states.in_everywhere(name) if self._into(ctx) else states.out_everywhere(name)

    def apply(self, ctx: StepContext) -> None:
        access, host, cluster = step_access(ctx), step_host(ctx), self._cluster(ctx)
        if not self._into(ctx):
            take_out(access, cluster, host.name, _backup(ctx, host))
            return
        put_back(access, cluster, host.name, _backup(ctx, host), timeout=READY_TIMEOUT)
        if cluster.vip is not None:  # the next reload keeps it in
            text = render_haproxy_cfg(cluster).encode()
            for lb in cluster.lb_hosts:
                access.put_file(lb, cluster.paths.haproxy_cfg, text, backup=_backup(ctx, lb))

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"the apiserver of {step_host(ctx).name} is not "
                                  f"{'in' if self._into(ctx) else 'out of'} every load balancer")

    def rollback(self, ctx: StepContext) -> None:
        access, host, cluster = step_access(ctx), step_host(ctx), self._cluster(ctx)
        if self._into(ctx):
            if not backend_states(access, cluster).out_everywhere(host.name):
                take_out(access, cluster, host.name, _backup(ctx, host))
            for lb in cluster.lb_hosts if cluster.vip is not None else ():
                access.restore(lb, ctx.step_backup_set)
        elif not backend_states(access, cluster).in_everywhere(host.name):
            put_back(access, cluster, host.name, _backup(ctx, host), timeout=READY_TIMEOUT)


def _health(access: ClusterAccess, cluster: Cluster, host: Host, component: str) -> str | None:
    """Why ``component`` on ``host`` does not serve yet, or None."""
    if components.process(access, cluster, host, component).pid is None:
        return "no process listens"
    if component == components.APISERVER:
        try:
            wait_ready(access, cluster, host.name, time.monotonic())
        except HostError as e:
            return str(e)
        return None
    return components.why_unhealthy(access, cluster, host, component)


def _gone(access: ClusterAccess, cluster: Cluster, host: Host, component: str) -> str | None:
    found = components.process(access, cluster, host, component)
    return None if found.pid is None else f"pid {found.pid} still listens"


def _unit_active(access: ClusterAccess, host: Host, unit: str) -> bool:
    return access.run(host, ["systemctl", "is-active", "--quiet", unit]).exit_status == 0


def _start(access: ClusterAccess, host: Host, unit: str) -> None:
    access.run(host, ["systemctl", "daemon-reload"], check=True)
    access.run(host, ["systemctl", "enable", "--now", unit], check=True)


class MasterComponent(StepKind):
    """Start a control-plane component as it runs on the source master, or stop it."""

    name = "master-component"

    def _parts(self, ctx: StepContext) -> tuple[ClusterAccess, Cluster, Host, str]:
        after = _after(ctx)
        start = bool(ctx.step.arguments.get("start"))
        cluster = after if start else step_access(ctx).cluster
        return step_access(ctx), cluster, cluster.host(str(ctx.step.arguments["host"])), str(ctx.step.arguments["component"])

    def is_done(self, ctx: StepContext) -> bool:
        access, cluster, host, component = self._parts(ctx)
        if ctx.step.arguments.get("start"):
            return _health(access, cluster, host, component) is None
        return _gone(access, cluster, host, component) is None and (
            cluster.paths.manifests_dir is not None or not _unit_active(access, host, component))

    def apply(self, ctx: StepContext) -> None:
        access, cluster, host, component = self._parts(ctx)
        backup = _backup(ctx, host)
        path = component_file(cluster.layout, component)
        if ctx.step.arguments.get("start"):
            servers = ctx.step.arguments.get("etcd_servers")
            change = None
            if servers:
                value = ",".join(str(s) for s in servers)  # type: ignore[union-attr]
                change = lambda text: replace_flag(text, "etcd-servers", value, f"{host.name}:{path}")  # noqa: E731
            source = _source(ctx)
            if not _copy(access, source, host, path, backup, change):
                raise HostError(f"{source.name} has no {path} to copy")
            if cluster.paths.manifests_dir is None:
                _start(access, host, component)
            self.verify(ctx)
            return
        if cluster.paths.manifests_dir is not None:
            access.remove_file(host, path, backup=backup)
        else:
            access.run(host, ["systemctl", "disable", "--now", component], check=True)
        _wait(lambda: _gone(access, cluster, host, component), READY_TIMEOUT, f"{component} on {host.name} did not stop")

    def verify(self, ctx: StepContext) -> None:
        access, cluster, host, component = self._parts(ctx)
        if ctx.step.arguments.get("start"):
            try:
                _wait(lambda: _health(access, cluster, host, component), READY_TIMEOUT,
                      f"{component} on {host.name} did not become healthy")
            except HostError as e:
                raise StepNotVerified(str(e)) from e
        elif not self.is_done(ctx):
            raise StepNotVerified(f"{component} still runs on {host.name}")

    def rollback(self, ctx: StepContext) -> None:
        access, cluster, host, component = self._parts(ctx)
        units = cluster.paths.manifests_dir is None
        if ctx.step.arguments.get("start"):
            if units:
                access.run(host, ["systemctl", "disable", "--now", component])
            access.restore(host, ctx.step_backup_set)
            _wait(lambda: _gone(access, cluster, host, component), READY_TIMEOUT,
                  f"{component} on {host.name} did not stop")
            return
        access.restore(host, ctx.step_backup_set)
        if units:
            _start(access, host, component)
        _wait(lambda: _health(access, cluster, host, component), READY_TIMEOUT,
              f"{component} on {host.name} did not come back")


def _marks(node: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a Node a master's: its role labels, its taints but the conditions', cordoned."""
    metadata, spec = node.get("metadata") or {}, node.get("spec") or {}
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k.startswith(_MASTER_LABEL_PREFIXES)}
    taints = [t for t in spec.get("taints") or [] if not str(t.get("key", "")).startswith(_CONDITION_TAINT_PREFIX)]
    return {"labels": labels, "taints": taints, "unschedulable": bool(spec.get("unschedulable"))}


def _marked(node: Mapping[str, Any] | None, marks: Mapping[str, Any]) -> bool:
    if node is None:
        return False
    have = _marks(node)
    return (all(have["labels"].get(k) == v for k, v in marks["labels"].items())
            and all(t in have["taints"] for t in marks["taints"])
            and have["unschedulable"] == marks["unschedulable"])


class MasterNode(StepKind):
    """The kubelet started and its Node marked like the source master's; or the kubelet
    stopped (and the node-local proxy, when the host needs it no more) and the Node deleted."""

    name = "master-node"

    def _node(self, ctx: StepContext) -> str:
        return step_host(ctx).kube_node_name

    def _source_marks(self, ctx: StepContext) -> dict[str, Any]:
        """The source's Node's marks; once it is gone (a migration retired it; a resumed run
        looks again), another master's."""
        access = step_access(ctx)
        api = access.kube()
        names = [_source(ctx).kube_node_name, *(m.kube_node_name for m in access.cluster.masters
                                               if m.name != step_host(ctx).name)]
        node = next((found for name in names if (found := read_node(api, name)) is not None), None)
        if node is None:
            raise KubehaError(f"Node {names[0]} is not in the API: its marks cannot be copied")
        return _marks(node)

    def is_done(self, ctx: StepContext) -> bool:
        access, host = step_access(ctx), step_host(ctx)
        api = access.kube()
        node = read_node(api, self._node(ctx))
        if not ctx.step.arguments.get("start"):
            # the node proxy too: a resume that re-did an earlier LB step started it again
            return node is None and not _unit_active(access, host, "kubelet") and not (
                _leaves_node_proxy(host, access.cluster, _after(ctx)) and _unit_active(access, host, "nginx"))
        return node_ready(api, self._node(ctx)) and _marked(node, self._source_marks(ctx))

    def apply(self, ctx: StepContext) -> None:
        access, host, name = step_access(ctx), step_host(ctx), self._node(ctx)
        api = access.kube()
        if ctx.step.arguments.get("start"):
            _start(access, host, "kubelet")
            _wait(lambda: None if node_ready(api, name) else "not Ready", READY_TIMEOUT,
                  f"Node {name} did not register Ready")
            marks = self._source_marks(ctx)
            node = read_node(api, name) or {}
            taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t not in marks["taints"]]
            patch_node(api, name, {"metadata": {"labels": marks["labels"]},
                                   "spec": {"taints": taints + marks["taints"], "unschedulable": marks["unschedulable"]}})
            return
        try:
            access.run(host, ["systemctl", "disable", "--now", "kubelet"], check=True)
        except CommandFailed:
            # no unit is fine: a resumed run gets here again after a later step removed its files
            if _unit_active(access, host, "kubelet"):
                raise
        _stop_node_proxy(access, host, access.cluster, _after(ctx))  # the kubelet used it
        delete_node(api, name)

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified(f"Node {self._node(ctx)} is "
                                  f"{'not Ready and marked' if ctx.step.arguments.get('start') else 'still there'}")

    def rollback(self, ctx: StepContext) -> None:
        access, host = step_access(ctx), step_host(ctx)
        if not ctx.step.arguments.get("start"):
            raise KubehaError(f"Node {self._node(ctx)} was deleted; start the kubelet on {host.name} to register it again")
        access.run(host, ["systemctl", "disable", "--now", "kubelet"])
        delete_node(access.kube(), self._node(ctx))


for _kind in (*KINDS, CopyMasterFiles(), RemoveMasterFiles(), LbServer(), LbRotation(), MasterComponent(), MasterNode(),
              RestartComponent(), RepointNodeBatch(), RepointKubeProxyConfigMap()):
    registry.add_kind(_kind)


# ---- the operations -------------------------------------------------------------------------------


def _leader_elect(access: ClusterAccess, cluster: Cluster) -> dict[str, str]:
    """``master/component`` -> its ``--leader-elect`` (default true) for every reachable master."""
    found = {}
    for master in cluster.masters:
        if master.name in access.connect_errors:
            continue
        for component in (components.CONTROLLER_MANAGER, components.SCHEDULER):
            flags = components.file_flags(access, cluster, master, component)
            found[f"{master.name}/{component}"] = str(flags.get("leader-elect", "true"))
    return found


class MasterViewOperation(EtcdMembershipOperation):
    """An operation that looks at etcd, the load balancers, the VIP and the nodes before each step."""

    registry = registry

    def view_factory(self, access: ClusterAccess, plan: Plan) -> ViewFactory:
        return master_view_factory(access)


class _MasterOperation(MasterViewOperation):
    adding: bool

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        master_change(inventory.cluster, arguments.get("host") or "", self.adding)

    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        cluster = inventory.cluster
        host, change = master_change(cluster, arguments.get("host") or "", self.adding)
        facts = read_facts(access, change)
        if host.name in access.connect_errors:
            facts = replace(facts, unreachable={**facts.unreachable, host.name: str(access.connect_errors[host.name])})
        roles = roles_after_add(cluster, host) if self.adding else roles_after_remove(host)
        after = inventory.model_copy(update={"cluster": with_roles(cluster, host.name, roles)})
        text = dump_inventory(after)
        common = dict(operation=self.name, operation_id=new_operation_id(self.name), arguments=arguments,
                      cluster=cluster, host=host, change=change, facts=facts,
                      inventory_digest=inventory_digest(inventory_path.read_text()),
                      inventory_path=inventory_path.resolve(), inventory_after=text,
                      inventory_after_digest=inventory_digest(text),
                      snapshot_dir=default_journal_path().parent / "snapshots", now=datetime.now(timezone.utc))
        if self.adding:
            return add_master_plan(leader_elect=_leader_elect(access, cluster), **common)  # type: ignore[arg-type]
        nodes_first = repoint_off(access, str(common["operation_id"]), [host], str(common["inventory_digest"]))
        return remove_master_plan(nodes_first=nodes_first, **common)  # type: ignore[arg-type]


def repoint_off(access: ClusterAccess, operation_id: str, retiring: list[Host], digest: str) -> list[Step]:
    """Steps pointing the nodes whose kubelet or kube-proxy kubeconfig names a retiring master
    at the cluster's endpoint (``repoint-nodes``' steps), or none; PlanError when they cannot."""
    return repoint_naming(access, operation_id, [str(h.address) for h in retiring],
                          RepointRequest(server=access.cluster.endpoint), digest, skip=retiring, what="an old master")


def repoint_naming(access: ClusterAccess, operation_id: str, addresses: list[str], request: RepointRequest,
                   digest: str, *, skip: Iterable[Host] = (), served_later: bool = False, what: str) -> list[Step]:
    """Steps pointing the nodes (but ``skip``) whose kubelet or kube-proxy kubeconfig names
    one of ``addresses`` at ``request.server`` (``repoint-nodes``' steps, with its batch,
    failure budget and node timeout), or none; PlanError when they cannot. ``served_later``:
    an earlier step of the plan serves the server (each repoint step checks that it answers
    before it runs)."""
    cluster = access.cluster
    skipped = set(skip)
    hosts = [h for h in node_hosts(cluster) if h not in skipped and h.name not in access.connect_errors]
    nodes, unread = read_nodes_files(access, hosts)
    stale = [name for name, files in nodes.items() if any(names_an_address(server, a) for server in files.servers
                                                          for a in addresses)]
    if not stale:
        return []
    request = replace(request, hosts=tuple(stale))
    not_served = None if served_later else ServerCheck(access).reason(request.server, [cluster.host(n) for n in stale])
    facts = RepointFacts(nodes=nodes, unreachable=unread, kube_proxy_configmap=kube_proxy_servers(access),
                         not_served=not_served)
    try:
        return list(repoint_plan(operation_id=operation_id, arguments={}, cluster=cluster, request=request,
                                 facts=facts, inventory_digest=digest, now=datetime.now(timezone.utc)).steps)
    except PlanError as e:
        raise PlanError(f"{', '.join(stale)} name {what} and cannot be repointed at {request.server}: {e}") from e


class MigrateMasters(MasterViewOperation):
    """``replace``: OLD=NEW[,OLD=NEW...]: each NEW becomes a master, then its OLD stops being one."""

    name = "migrate-masters"

    def _pairs(self, cluster: Cluster, arguments: Mapping[str, str]) -> list[tuple[Host, Host]]:
        return migration_pairs(cluster, parse_pairs(arguments.get("replace") or ""))

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        self._pairs(inventory.cluster, arguments)

    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        cluster = inventory.cluster
        pairs = self._pairs(cluster, arguments)
        facts = read_facts(access, migration_change(cluster, pairs))
        unreachable = {h.name: str(access.connect_errors[h.name]) for pair in pairs for h in pair
                       if h.name in access.connect_errors}
        facts = replace(facts, unreachable={**facts.unreachable, **unreachable})
        operation_id, digest = new_operation_id(self.name), inventory_digest(inventory_path.read_text())
        return migrate_masters_plan(
            operation=self.name, operation_id=operation_id, arguments=arguments, cluster=cluster,
            pairs=pairs, facts=facts, leader_elect=_leader_elect(access, cluster),
            nodes_first=repoint_off(access, operation_id, [old for old, _ in pairs], digest),
            inventory_digest=digest, inventory_path=inventory_path.resolve(),
            render_inventory=lambda after: dump_inventory(inventory.model_copy(update={"cluster": after})),
            snapshot_dir=default_journal_path().parent / "snapshots", now=datetime.now(timezone.utc))

    def _olds(self, plan: Plan) -> list[str]:
        return [old for old, _ in parse_pairs(str(plan.arguments.get("replace") or ""))]

    def retiring_lb_hosts(self, plan: Plan, inventory: Inventory) -> tuple[str, ...]:
        return tuple(h.name for h in inventory.cluster.lb_hosts if h.name in self._olds(plan))

    def left_to_do(self, access: ClusterAccess, plan: Plan, inventory: Inventory) -> list[str]:
        """API objects still naming an old master (monitoring targets given by hand, say)."""
        addresses = [str(inventory.cluster.host(old).address) for old in self._olds(plan)]
        return [f"{line}: an old master; update or delete it" for line in objects_naming(access.kube(), addresses)]


class AddMaster(_MasterOperation):
    """``host``: the host (of the inventory) that becomes a master."""

    name = "add-master"
    adding = True


class RemoveMaster(_MasterOperation):
    """``host``: the master that stops being one (the host stays in the inventory)."""

    name = "remove-master"
    adding = False

    def retiring_lb_hosts(self, plan: Plan, inventory: Inventory) -> tuple[str, ...]:
        name = str(plan.arguments.get("host") or "")
        return (name,) if name in {h.name for h in inventory.cluster.lb_hosts} else ()


OPERATIONS: tuple[Operation, ...] = (AddMaster(), RemoveMaster(), MigrateMasters())
