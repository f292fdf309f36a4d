"""Planning a rolling restart of control-plane components (pure: no host is asked).

One host at a time, one component at a time, each waited for: the apiserver (and etcd on a
master, whose stacked apiserver is not ready while its member restarts) is taken out of
every load balancer first and put back only when ready; etcd members restart followers
first, and leadership moves off the leader's member before it restarts (again at the
restart itself, should leadership have moved there since); a host whose etcd member leads
goes last.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from kubeha.errors import InputError, as_typed
from kubeha.model import Cluster, Host
from kubeha.operations.components import (
    APISERVER, DEFAULT_RESTART, ETCD, RESTART_TIMEOUT, RESTARTABLE, drains_apiserver, file_of, runs_as_static_pod,
    runs_on,
)
from kubeha.operations.etcd_plan import ETCD_HEALTHY, LB_SPARE, VIP_HELD, parse_hosts, peer_url
from kubeha.plan import Change, ChangeKind, Plan, PlanError, Step

MAJORITY_WHILE_DOWN = "etcd: a healthy majority of voters remains while the member restarts"


def parse_components(text: str | None) -> tuple[str, ...]:
    """``kube-apiserver,etcd`` -> those names, in restart order; default: apiserver,
    controller-manager and scheduler. InputError for a name kubeha does not restart."""
    if not text:
        return DEFAULT_RESTART
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in RESTARTABLE]
    if unknown or not names:
        raise InputError(f"cannot restart {', '.join(map(as_typed, unknown)) or 'nothing'}: name one or more of "
                         f"{', '.join(RESTARTABLE)}")
    return tuple(c for c in RESTARTABLE if c in names)


def parse_timeout(text: str | None) -> float:
    """Seconds each component gets to come back restarted and healthy (default 120)."""
    if not text:
        return RESTART_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 5 <= seconds <= 3600:
        raise InputError(f"timeout {text!r}: give seconds between 5 and 3600")
    return seconds


# flags operations keep right (an apiserver's etcd list, a member's identity and peers): set
# through `--set`, one host's would disagree with what kubeha plans from
MANAGED_FLAGS = frozenset({
    "etcd-servers", "advertise-address", "name", "data-dir", "initial-cluster", "initial-cluster-state",
    "initial-advertise-peer-urls", "advertise-client-urls", "listen-client-urls", "listen-peer-urls",
})
_FLAG_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def parse_flag_settings(text: str | None) -> dict[str, str]:
    """``election-timeout=500,heartbeat-interval=50`` (a leading ``--`` allowed) -> the flags
    to set; InputError naming every bad one."""
    flags: dict[str, str] = {}
    reasons = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, equals, value = item.strip().removeprefix("--").partition("=")
        if not equals or not _FLAG_NAME.fullmatch(name) or not value or any(c.isspace() for c in value):
            reasons.append(f"{item.strip()!r} is not FLAG=VALUE")
        elif name in flags:
            reasons.append(f"--{name} is set twice")
        elif name in MANAGED_FLAGS:
            reasons.append(f"--{name} is kept right by kubeha's operations (etcd migrate, migrate-masters, "
                           "change-endpoint), not set by hand")
        else:
            flags[name] = value
    if reasons:
        raise InputError("; ".join(reasons))
    return flags


def _etcd_timing_reasons(flags: Mapping[str, str]) -> list[str]:
    """etcd refuses to start with an election timeout under 5 heartbeats (its docs advise 10)."""
    timings = {name: flags.get(name, default) for name, default in (("heartbeat-interval", "100"),
                                                                     ("election-timeout", "1000"))}
    if not any(name in flags for name in timings):
        return []
    if not all(value.isdigit() and int(value) > 0 for value in timings.values()):
        return [f"etcd's --heartbeat-interval and --election-timeout are milliseconds: got {timings}"]
    heartbeat, election = (int(timings[name]) for name in ("heartbeat-interval", "election-timeout"))
    if election < 5 * heartbeat:
        return [f"etcd's --election-timeout ({election} ms) must be at least 5 times --heartbeat-interval "
                f"({heartbeat} ms; unset flags count at etcd's defaults, 100 and 1000)"]
    return []


def restart_refusals(cluster: Cluster, components: Sequence[str], hosts: Sequence[Host],
                     unhealthy_members: Sequence[str], flags: Mapping[str, str] | None = None) -> list[str]:
    """Every reason the rolling restart must not be planned."""
    reasons = [f"{h.name} runs none of {', '.join(components)}"
               for h in hosts if not any(runs_on(cluster, h, c) for c in components)]
    if flags and len(components) != 1:
        reasons.append(f"flags belong to one program: name one component with --set (got {', '.join(components)})")
    elif flags and components[0] == ETCD:
        reasons += _etcd_timing_reasons(flags)
    if APISERVER in components and len(cluster.masters) < 2:
        reasons.append("kube-apiserver on the only master cannot restart without an outage: add a master first")
    if ETCD in components:
        if len(cluster.etcd_members) < 3:
            reasons.append(f"etcd has {len(cluster.etcd_members)} member(s): restarting one loses quorum; "
                           "grow it to 3 first")
        reasons += [f"etcd member not healthy: {why}" for why in unhealthy_members]
    return reasons


def restart_hosts(cluster: Cluster, components: Sequence[str], names: str | None) -> list[Host]:
    """The hosts named (default: every host running one of ``components``), in inventory
    order; InputError for a name not in the inventory."""
    if not names:
        return [h for h in cluster.hosts if any(runs_on(cluster, h, c) for c in components)]
    chosen = parse_hosts(names)
    known = {h.name for h in cluster.hosts}
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise InputError(f"not in the inventory: {', '.join(unknown)}")
    return [h for h in cluster.hosts if h.name in chosen]


def restart_step(cluster: Cluster, host: Host, component: str, timeout: float = RESTART_TIMEOUT,
                 flags: Mapping[str, str] | None = None) -> Step:
    """Restart ``component`` on ``host``, with ``flags`` set in its file first."""
    drain = drains_apiserver(cluster, host, component)
    changes = [Change(kind=ChangeKind.SERVICE, target=component, host=host.name, before="running",
                      after="restarted")]
    changes += [Change(kind=ChangeKind.FILE, target=f"{file_of(cluster, host, component)} --{flag}", host=host.name,
                       before="as the file has it", after=value) for flag, value in (flags or {}).items()]
    if runs_as_static_pod(cluster, host, component):
        changes.append(Change(kind=ChangeKind.FILE, target=str(file_of(cluster, host, component)), host=host.name,
                              before="manifest", after="manifest + restart annotation"))
    if drain:
        changes.append(Change(kind=ChangeKind.LB_BACKEND, target=f"apiserver {host.name}", before="in every LB",
                              after="out while it restarts, back when ready"))
    checks = (LB_SPARE, VIP_HELD) if drain else ()
    if component == ETCD:
        checks = (ETCD_HEALTHY, MAJORITY_WHILE_DOWN, *checks)
    arguments: dict[str, object] = {"host": host.name, "component": component, "drain": drain, "timeout": timeout}
    if component == ETCD:
        arguments["peer_url"] = peer_url(cluster, host)
    if flags:
        arguments["flags"] = dict(flags)
    return Step(
        id=f"restart-{component}-{host.name}", kind="restart-component",
        title=f"Restart {component} on {host.name}"
        + (f" with {', '.join(f'--{flag}' for flag in flags)} set" if flags else "")
        + (" (out of every load balancer meanwhile)" if drain else ""),
        hosts=(host.name,), changes=tuple(changes), safety_checks=checks,
        verification=f"a new {component} process{' runs with the flags and' if flags else ''} answers its health check"
        + ("; the apiserver is back in every load balancer" if drain else ""),
        rollback=("its file restored from the backup and the component restarted on it; " if flags else "nothing to undo; ")
        + "an apiserver that is not ready stays out of the load balancers",
        estimated_seconds=30 if drain else 15, arguments=arguments)  # type: ignore[arg-type]


def _move_leader_step(cluster: Cluster, host: Host) -> Step:
    others = [peer_url(cluster, h) for h in cluster.etcd_members if h != host]
    return Step(
        id=f"move-leader-off-{host.name}", kind="etcd-move-leader",
        title=f"Move etcd leadership off {host.name} before its member restarts", hosts=(host.name,),
        changes=(Change(kind=ChangeKind.ETCD_MEMBER, target=host.name, before="leader", after="follower"),),
        safety_checks=(ETCD_HEALTHY,), verification=f"the leader is not {host.name}",
        rollback="nothing to undo", estimated_seconds=2,
        arguments={"host": host.name, "peer_url": peer_url(cluster, host), "to_peer_urls": others})


def rolling_restart_plan(*, operation: str, operation_id: str, arguments: Mapping[str, str], cluster: Cluster,
                         components: Sequence[str], hosts: Sequence[Host], leader_host: str | None,
                         unhealthy_members: Sequence[str], inventory_digest: str, now: datetime,
                         timeout: float = RESTART_TIMEOUT, flags: Mapping[str, str] | None = None) -> Plan:
    """The plan, or PlanError naming every reason it must not be made. ``leader_host``: the
    host whose etcd member leads (it restarts last, after leadership moved off it).
    ``flags``: set in the component's file before each restart (added where missing)."""
    reasons = restart_refusals(cluster, components, hosts, unhealthy_members, flags)
    if reasons:
        raise PlanError(f"{operation} refused: " + "; ".join(reasons))
    ordered = sorted(hosts, key=lambda h: ETCD in components and h.name == leader_host)
    steps: list[Step] = []
    for host in ordered:
        for component in components:
            if not runs_on(cluster, host, component):
                continue
            if component == ETCD and host.name == leader_host:
                steps.append(_move_leader_step(cluster, host))
            steps.append(restart_step(cluster, host, component, timeout, flags))
    return Plan.build(operation=operation, operation_id=operation_id, arguments=dict(arguments), created=now,
                      inventory_digest=inventory_digest, steps=tuple(steps))


__all__ = ["MAJORITY_WHILE_DOWN", "MANAGED_FLAGS", "parse_components", "parse_flag_settings", "parse_timeout",
           "restart_hosts", "restart_refusals",
           "restart_step", "rolling_restart_plan"]
