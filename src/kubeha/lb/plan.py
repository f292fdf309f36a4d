"""`kubeha lb apply`, the pure part: which config files change on which host, and what each
service then needs (start, reload, nothing).

The LB hosts (dedicated ``lb`` hosts, else the masters) run haproxy and keepalived; the
node-local proxy hosts run nginx. Steps come in the order they are carried out: haproxy
first (keepalived's check fetches /readyz through it, so the VIP settles only where
haproxy answers), then keepalived from the highest priority down, then nginx.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

from kubeha.errors import InputError
from kubeha.model import Cluster, Host, Layout, Role
from kubeha.render import render_haproxy_cfg, render_keepalived_conf, render_node_proxy_conf

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"  # loaded by the rendered nginx.conf


@dataclass(frozen=True)
class LbService:
    """A service of the HA path: its unit, how its binary checks a config, what it needs installed."""

    unit: str
    check: tuple[str, ...]  # the binary's config test; the file to test is appended
    requires: tuple[tuple[str, str], ...]  # (command, or absolute path of a file; Debian package)

    @property
    def binary(self) -> str:
        return self.check[0]


HAPROXY = LbService("haproxy", ("haproxy", "-c", "-f"), (("haproxy", "haproxy"),))
# keepalived's check script fetches /readyz through the local haproxy with curl
KEEPALIVED = LbService("keepalived", ("keepalived", "-t", "-f"),
                       (("keepalived", "keepalived"), ("curl", "curl")))
NGINX = LbService("nginx", ("nginx", "-t", "-q", "-c"),
                  (("nginx", "nginx"), (NGINX_STREAM_MODULE, "libnginx-mod-stream")))
SERVICES = (HAPROXY, KEEPALIVED, NGINX)  # the order apply brings them up in


class Action(str, Enum):
    START = "start"  # enable and start: it is not running
    RELOAD = "reload"  # running an older config: reload without dropping connections
    NONE = "none"  # running the wanted config


@dataclass(frozen=True)
class ManagedConfig:
    """A config file kubeha owns on a host, as it should be."""

    host: Host
    service: LbService
    path: PurePosixPath
    content: bytes


@dataclass(frozen=True)
class ServiceStep:
    """One service on one host: its config, whether the file changes, and the service action."""

    config: ManagedConfig
    changed: bool  # the file on the host differs from the rendered one, or is missing
    action: Action

    @property
    def host(self) -> str:
        return self.config.host.name

    @property
    def unit(self) -> str:
        return self.config.service.unit

    @property
    def does_something(self) -> bool:
        return self.changed or self.action is not Action.NONE

    def describe(self) -> str:
        """``/etc/haproxy/haproxy.cfg changed, reload haproxy``"""
        action = f"{self.unit} keeps running" if self.action is Action.NONE else f"{self.action.value} {self.unit}"
        return f"{self.config.path} {'changed' if self.changed else 'unchanged'}, {action}"


@dataclass(frozen=True)
class LbPlan:
    cluster: Cluster
    steps: tuple[ServiceStep, ...]  # every managed config, in execution order

    @property
    def pending(self) -> tuple[ServiceStep, ...]:
        return tuple(s for s in self.steps if s.does_something)

    def by_host(self) -> dict[str, tuple[ServiceStep, ...]]:
        """Every step, grouped by host in inventory order."""
        return {h.name: steps for h in self.cluster.hosts
                if (steps := tuple(s for s in self.steps if s.host == h.name))}


def keepalived_priority(cluster: Cluster, host: Host) -> int:
    """150 for the first LB host, 10 less for each next one: apply starts it first, so it
    takes the VIP and, with ``nopreempt``, keeps it."""
    return 150 - 10 * cluster.lb_hosts.index(host)


def node_proxy_hosts(cluster: Cluster) -> tuple[Host, ...]:
    """Hosts running the node-local nginx: every worker, and in the kubeasz layout the
    masters too (their components use 127.0.0.1; kubeadm's apiserver holds *:6443 there)."""
    if not cluster.node_local_proxy:
        return ()
    if cluster.layout is Layout.KUBEASZ:
        return tuple(h for h in cluster.hosts if h.has(Role.WORKER) or h.has(Role.MASTER))
    return cluster.workers


def lb_configs(cluster: Cluster, down: Collection[str] = ()) -> tuple[ManagedConfig, ...]:
    """Every config file of the HA path, rendered, in execution order; the apiservers
    named in ``down`` listed out of rotation."""
    if cluster.vip is None:
        raise InputError(f"cluster {cluster.name} has no VIP: set vip in the inventory "
                         "(an unused address of the hosts' subnet)")
    paths = cluster.paths
    haproxy_cfg = render_haproxy_cfg(cluster, down=down).encode()
    nginx_conf = render_node_proxy_conf(cluster, down=down).encode()
    lbs = cluster.lb_hosts  # highest keepalived priority first
    return (
        tuple(ManagedConfig(h, HAPROXY, paths.haproxy_cfg, haproxy_cfg) for h in lbs)
        + tuple(ManagedConfig(h, KEEPALIVED, paths.keepalived_conf,
                              render_keepalived_conf(cluster, h, keepalived_priority(cluster, h)).encode())
                for h in lbs)
        + tuple(ManagedConfig(h, NGINX, paths.node_proxy_conf, nginx_conf) for h in node_proxy_hosts(cluster))
    )


FileKey = tuple[str, PurePosixPath]  # (host name, path)


def plan_lb_apply(cluster: Cluster, current_files: Mapping[FileKey, bytes | None],
                  running: Collection[tuple[str, str]] | None = None, down: Collection[str] = (),
                  stale: Collection[tuple[str, str]] = ()) -> LbPlan:
    """What `lb apply` does: write each config that differs from ``current_files`` (a key
    missing there counts as a missing file); start each service that is not ``running``
    ((host, unit) pairs; default: those whose config exists), reload each running one
    whose config changes or that may still run an older one (``stale``: an earlier run
    wrote its config and stopped before the reload)."""
    steps = []
    for config in lb_configs(cluster, down):
        current = current_files.get((config.host.name, config.path))
        changed = current != config.content
        is_running = (current is not None if running is None
                      else (config.host.name, config.service.unit) in running)
        unit = (config.host.name, config.service.unit)
        action = Action.START if not is_running else Action.RELOAD if changed or unit in stale else Action.NONE
        steps.append(ServiceStep(config, changed, action))
    return LbPlan(cluster, tuple(steps))


def install_hint(missing: Mapping[str, Collection[str]]) -> str:
    """One line saying which hosts lack which packages and the command that installs them."""
    by_packages: dict[tuple[str, ...], list[str]] = {}
    for host, packages in missing.items():
        if packages:
            by_packages.setdefault(tuple(sorted(set(packages))), []).append(host)
    return "; ".join(f"{', '.join(hosts)} lack {' '.join(packages)}: run "
                     f"`apt-get install -y {' '.join(packages)}` there"
                     for packages, hosts in by_packages.items())


_COMPLAINT = re.compile(r"alert|emerg|error|unknown|invalid|fail", re.IGNORECASE)


def complaint(output: str) -> str:
    """The line of a program's output that says what is wrong (else its last line)."""
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    return next((line for line in lines if _COMPLAINT.search(line)), lines[-1] if lines else "no output")[:300]
