"""`kubeha lb apply`, the part that touches hosts: read what is there, test the new configs
with their own binaries, then write them and start or reload the services.

Every changed config is tested on its host before any host is changed, so a config its
binary rejects changes nothing anywhere. Files are written atomically into one backup set
per run; when a step fails, the files this run changed on that host are restored, the
services it had already started there are stopped and those it reloaded are reloaded
again, and the run stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NoReturn, TypeVar

from kubeha.access import ClusterAccess
from kubeha.errors import HostError
from kubeha.hosts import BackupSet, CommandFailed, HostConnection, HostOutcome
from kubeha.hosts.facts import holds_address, ipv4_addresses_on
from kubeha.lb.plan import (
    HAPROXY, KEEPALIVED, SERVICES, Action, FileKey, LbPlan, ManagedConfig, ServiceStep, complaint,
    install_hint, lb_configs, plan_lb_apply,
)
from kubeha.model import Cluster, Host, VirtualIP
from kubeha.render import HAPROXY_ADMIN_SOCKET, HAPROXY_SERVER_STATE, render_keepalived_conf

T = TypeVar("T")
Report = Callable[[str], None]

HANDOVER_PRIORITY = 254  # above every usual one (150 down): the new holder preempts the old
VIP_TIMEOUT = 30.0  # keepalived takes the VIP within 3 adverts (0.3 s) once its check passes
_VIP_POLL = 0.2
_RUNNING = ("active", "reloading")
# A unit's name here: its config was written and the service may still run the one before
# (set before the write, cleared once the service started or reloaded). A run killed in
# between leaves it, and the next run reloads the service though the file is as wanted.
RELOAD_PENDING_DIR = "/var/lib/kubeha/reload-pending"

_API_SOCKET_TIMEOUT = 5  # haproxy answers at once; this bounds a hung one
# `api SOCKET COMMAND` prints the answer of haproxy's runtime API: socat where the host has
# it, else python3 (hosts without socat still have the python3 Debian needs).
HAPROXY_API_FUNCTION = """api() {
  if command -v socat >/dev/null 2>&1; then
    printf '%s\\n' "$2" | socat -t {timeout} - "UNIX-CONNECT:$1"
  else
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout({timeout})
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\\n")
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    sys.stdout.buffer.write(chunk)
' "$1" "$2"
  fi
}
""".replace("{timeout}", str(_API_SOCKET_TIMEOUT))
# $1 runtime API socket, $2 server-state-file. Run before haproxy starts or reloads: a new
# haproxy process starts every server one failed check from down, and when the apiservers
# are busy the first checks after a reload (all at once, each within `timeout connect`)
# can all fail: the LB then refuses every connection until the next checks pass (CI saw
# 5 requests refused in ~0.35 s). Saved, each server keeps its health and up/down state.
# The admin state column (7) is zeroed: a reload still takes maintenance from the config
# only, as without the file. Runtime state, not a config: not backed up. With no haproxy
# answering (a start) the file is reset to no servers.
_SAVE_SERVER_STATE_SCRIPT = HAPROXY_API_FUNCTION + """sock=$1 state=$2
mkdir -p "$(dirname "$state")"
if api "$sock" "show servers state" 2>/dev/null | awk '$1 !~ /^#/ && NF > 10 { $7 = 0 } { print }' > "$state.tmp" &&
   [ "$(head -n 1 "$state.tmp")" = 1 ]; then
  mv -f "$state.tmp" "$state"
else
  rm -f "$state.tmp"
  printf '1\\n' > "$state"
fi"""

# Prints each of its arguments (a command, or an absolute path of a file) that this host lacks.
_MISSING_SCRIPT = """for r in "$@"; do
  case $r in /*) [ -e "$r" ] ;; *) command -v "$r" >/dev/null 2>&1 ;; esac || echo "$r"
done"""
# Tests stdin as a config with the command in "$@" (the file is appended): prints the
# temporary file's name, then the test's output; exits with the test's status.
_CHECK_SCRIPT = """tmp=$(mktemp "${TMPDIR:-/tmp}/kubeha-check.XXXXXXXX") || exit 1
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
echo "$tmp"
"$@" "$tmp" 2>&1"""


@dataclass(frozen=True)
class LbHostsState:
    files: dict[FileKey, bytes | None]  # every managed config as it is on its host
    running: frozenset[tuple[str, str]]  # (host, unit) of the services that are running
    stale: frozenset[tuple[str, str]] = frozenset()  # (host, unit) maybe running an older config

    def plan(self, cluster: Cluster, down: Iterable[str] = ()) -> LbPlan:
        """What `lb apply` of ``cluster``'s configs does on the hosts as they are."""
        return plan_lb_apply(cluster, self.files, self.running, down=tuple(down), stale=self.stale)


@dataclass(frozen=True)
class StepDone:
    step: ServiceStep
    seconds: float  # how long the service action took (0 for none)


@dataclass(frozen=True)
class LbApplyResult:
    operation_id: str | None  # the backup set's; None when nothing needed doing
    done: tuple[StepDone, ...] = ()
    vip_holders: tuple[str, ...] = ()


def vip_holding(access: ClusterAccess, vip: VirtualIP) -> dict[str, HostOutcome[bool]]:
    """Whether each LB host holds ``vip`` now, or why it could not be asked."""
    addresses = ipv4_addresses_on(vip.interface)

    async def holds(conn: HostConnection) -> bool:
        shown = await conn.run(addresses.command, check=False)  # no such interface: not a holder
        return holds_address(addresses.parse(shown.stdout), vip.address)

    return access.run_all(holds, hosts=access.cluster.lb_hosts)


def new_operation_id(now: datetime | None = None) -> str:
    return f"lb-apply-{(now or datetime.now(timezone.utc)):%Y%m%dT%H%M%SZ}"


def _values(outcomes: Mapping[str, HostOutcome[T]]) -> dict[str, T]:
    """Each host's value; one HostError naming every host that failed."""
    errors = [str(o.error) for o in outcomes.values() if o.error is not None]
    if errors:
        raise HostError("; ".join(errors))
    return {host: o.value for host, o in outcomes.items()}  # type: ignore[misc]


def _by_host(configs: Iterable[ManagedConfig]) -> dict[str, list[ManagedConfig]]:
    grouped: dict[str, list[ManagedConfig]] = {}
    for config in configs:
        grouped.setdefault(config.host.name, []).append(config)
    return grouped


def read_lb_state(access: ClusterAccess, cluster: Cluster) -> LbHostsState:
    """The managed configs and service states on every LB and node-proxy host.

    Raises one line naming the packages to install where a service's binary is missing.
    """
    configs = _by_host(lb_configs(cluster))

    async def read(conn: HostConnection) -> tuple[list[str], dict[FileKey, bytes | None], set[tuple[str, str]]]:
        mine = configs[conn.name]
        requirements = dict.fromkeys(r for c in mine for r in c.service.requires)
        missing = (await conn.run(["sh", "-c", _MISSING_SCRIPT, "sh", *(what for what, _ in requirements)])
                   ).stdout.split()
        units = [c.service.unit for c in mine]
        states, pending, contents = await asyncio.gather(
            conn.run(["systemctl", "is-active", *units], check=False),
            conn.run(["sh", "-c", f"ls {RELOAD_PENDING_DIR} 2>/dev/null; true"]),
            conn.get_files([c.path for c in mine]))
        running = {(conn.name, unit) for unit, state in zip(units, states.stdout.split()) if state in _RUNNING}
        return ([package for what, package in requirements if what in missing],
                {(conn.name, c.path): content for c, content in zip(mine, contents)},
                running, {(conn.name, unit) for unit in pending.stdout.split() if unit in units})

    read_back = _values(access.run_all(read, hosts=list(configs)))
    missing = {host: packages for host, (packages, *_) in read_back.items() if packages}
    if missing:
        raise HostError(install_hint(missing))
    return LbHostsState(files={k: v for _, files, _, _ in read_back.values() for k, v in files.items()},
                        running=frozenset(r for _, _, running, _ in read_back.values() for r in running),
                        stale=frozenset(r for *_, stale in read_back.values() for r in stale))


def check_configs(access: ClusterAccess, configs: Iterable[ManagedConfig]) -> None:
    """Test each config with its binary on its host (a temporary copy; nothing else changes)."""
    configs_by_host = _by_host(configs)

    async def check(conn: HostConnection) -> list[str]:
        rejections = []
        for config in configs_by_host[conn.name]:
            result = await conn.run(["sh", "-c", _CHECK_SCRIPT, "sh", *config.service.check],
                                    input=config.content, check=False)
            if result.exit_status != 0:
                checked, _, output = result.stdout.partition("\n")
                why = complaint(output + result.stderr).replace(checked, str(config.path))
                rejections.append(f"{conn.name}: {config.service.binary} rejected the new {config.path}: {why}")
        return rejections

    rejected = [r for rs in _values(access.run_all(check, hosts=list(configs_by_host))).values() for r in rs]
    if rejected:
        raise HostError("; ".join(rejected) + "; nothing was changed on any host")


def _save_server_state_command() -> list[str]:
    return ["sh", "-c", _SAVE_SERVER_STATE_SCRIPT, "sh", str(HAPROXY_ADMIN_SOCKET), str(HAPROXY_SERVER_STATE)]


async def _carry_out(conn: HostConnection, step: ServiceStep, backup: BackupSet) -> float:
    """Write the step's config if it changed, then start or reload its service; the
    action's seconds."""
    marker = f"{RELOAD_PENDING_DIR}/{step.unit}"
    if step.changed:
        await conn.run(["sh", "-c", f"mkdir -p {RELOAD_PENDING_DIR} && touch {marker}"])
        await conn.put_file(step.config.path, step.config.content, backup=backup)
    if step.config.service is HAPROXY and step.action is not Action.NONE:
        await conn.run(_save_server_state_command())
    started = time.monotonic()
    if step.action is Action.START:
        command = ["systemctl", "enable", "--now", step.unit]
    elif step.action is Action.RELOAD:
        # haproxy: master-worker reload (USR2), old workers finish their connections;
        # nginx: new workers, old ones drain; keepalived: SIGHUP, the VIP stays
        command = ["systemctl", "reload", step.unit]
    else:
        return 0.0
    try:
        await conn.run(command)
    except CommandFailed as e:
        # systemctl only says where to look: say what the service logged
        log = await conn.run(["journalctl", "-u", step.unit, "-n", "10", "--no-pager"], check=False)
        raise HostError(f"{conn.name}: `{' '.join(command)}` failed: {complaint(log.stdout)}") from e
    seconds = time.monotonic() - started
    await conn.run(["rm", "-f", marker])
    return seconds


def _done_line(step: ServiceStep, seconds: float) -> str:
    """``master1: wrote /etc/haproxy/haproxy.cfg, reloaded haproxy in 0.12 s``"""
    done = [f"wrote {step.config.path}"] if step.changed else []
    if step.action is not Action.NONE:
        done.append(f"{'started' if step.action is Action.START else 'reloaded'} {step.unit} in {seconds:.2f} s")
    return f"{step.host}: {', '.join(done)}"


@dataclass
class _Run:
    access: ClusterAccess
    backup: BackupSet
    report: Report
    attempted: dict[str, list[ServiceStep]] = field(default_factory=dict)
    done: list[StepDone] = field(default_factory=list)

    def steps(self, steps: list[ServiceStep]) -> None:
        """Carry out steps on different hosts in parallel."""
        by_host = {s.host: s for s in steps}
        for step in steps:
            self.attempted.setdefault(step.host, []).append(step)
        outcomes = self.access.run_all(lambda conn: _carry_out(conn, by_host[conn.name], self.backup),
                                       hosts=list(by_host))
        for host, outcome in outcomes.items():
            if outcome.ok:
                step = by_host[host]
                self.done.append(StepDone(step, outcome.value or 0.0))
                self.report(_done_line(step, outcome.value or 0.0))
        failed = [(host, o.error) for host, o in outcomes.items() if o.error is not None]
        if failed:
            self.fail(failed)

    def keepalived(self, steps: list[ServiceStep], vip: VirtualIP) -> None:
        """When nobody holds the VIP, bring up the highest priority host starting and wait
        for it to take the VIP before the others start (runbook 004: started together,
        they fight over it)."""
        first_start = next((s for s in steps if s.action is Action.START), None)
        if first_start is not None and not self.vip_holders(vip):
            upto = steps.index(first_start) + 1
            self.steps(steps[:upto])
            self.wait_for_vip(first_start.host, vip)
            steps = steps[upto:]
        if steps:
            self.steps(steps)

    def vip_holders(self, vip: VirtualIP) -> tuple[str, ...]:
        return tuple(h for h, held in _values(vip_holding(self.access, vip)).items() if held)

    def wait_for_vip(self, host: str, vip: VirtualIP) -> None:
        started = time.monotonic()
        addresses = ipv4_addresses_on(vip.interface)
        while not holds_address(addresses.parse(self.access.run(host, addresses.command, check=True).stdout),
                                vip.address):
            if time.monotonic() - started > VIP_TIMEOUT:
                self.fail([(host, HostError(f"{host}: keepalived did not take the VIP {vip.address} on "
                                     f"{vip.interface} within {VIP_TIMEOUT:g} s; see `journalctl -u "
                                     f"keepalived` there"))])
            time.sleep(_VIP_POLL)
        self.report(f"{host}: holds the VIP {vip.address} after {time.monotonic() - started:.2f} s")

    def fail(self, errors: list[tuple[str, HostError]]) -> NoReturn:
        """Roll back the failing hosts and stop with one line."""
        causes = [f"{error} ({self.roll_back(host)})" for host, error in errors]
        raise HostError("; ".join(causes) + f"; backups in {self.backup.directory}")

    def roll_back(self, host: str) -> str:
        try:
            restored = self.access.restore(host, self.backup)
            for step in reversed(self.attempted[host]):
                if step.action is Action.START:
                    self.access.run(host, ["systemctl", "disable", "--now", step.unit], check=True)
                elif step.action is Action.RELOAD:
                    if step.config.service is HAPROXY:
                        self.access.run(host, _save_server_state_command(), check=True)
                    self.access.run(host, ["systemctl", "reload", step.unit], check=True)
                    self.access.run(host, ["rm", "-f", f"{RELOAD_PENDING_DIR}/{step.unit}"], check=True)
        except HostError as e:
            return f"rolling back {host} failed too: {e}"
        return f"restored {', '.join(e.path for e in restored) or 'no file'} on {host}"


def apply_lb_plan(access: ClusterAccess, plan: LbPlan, *, operation_id: str | None = None,
                  report: Report = lambda _: None) -> LbApplyResult:
    """Carry out ``plan``: test every changed config, then per service (haproxy, keepalived,
    nginx) write and start or reload it on its hosts."""
    pending = plan.pending
    if not pending:
        return LbApplyResult(None)
    check_configs(access, (s.config for s in pending if s.changed))
    run = _Run(access, BackupSet(operation_id or new_operation_id()), report)
    vip = plan.cluster.vip
    assert vip is not None  # lb_configs refused to plan without one
    for service in SERVICES:
        steps = [s for s in pending if s.config.service is service]
        if service is KEEPALIVED:
            run.keepalived(steps, vip)
        elif steps:
            run.steps(steps)
    holders = run.vip_holders(vip) if any(s.config.service is KEEPALIVED for s in pending) else ()
    return LbApplyResult(run.backup.operation_id, tuple(run.done), holders)


def hand_over_vip(access: ClusterAccess, cluster: Cluster, to: Host, backup: BackupSet,
                  report: Report = lambda _: None) -> None:
    """Move the VIP to ``to`` before its holder stops (make before break): keepalived on
    ``to`` is reloaded with the highest priority and ``preempt``, takes the VIP, and the
    holder steps down on its first advert, so some host holds the VIP at every moment.
    (Stopping the holder instead leaves ~0.1 s with no holder: a SYN then costs a client
    a 1 s retransmit.) The next `lb apply` of the caller writes ``to``'s usual config back;
    on a failure here ``to``'s config is restored."""
    vip = cluster.vip
    assert vip is not None
    config = ManagedConfig(to, KEEPALIVED, cluster.paths.keepalived_conf,
                           render_keepalived_conf(cluster, to, HANDOVER_PRIORITY, preempt=True).encode())
    check_configs(access, [config])
    run = _Run(access, backup, report)
    run.steps([ServiceStep(config, changed=True, action=Action.RELOAD)])
    started = time.monotonic()
    while (holders := run.vip_holders(vip)) != (to.name,):
        if time.monotonic() - started > VIP_TIMEOUT:
            run.fail([(to.name, HostError(
                f"{to.name}: keepalived did not take the VIP {vip.address} over from "
                f"{', '.join(holders) or 'nobody'} within {VIP_TIMEOUT:g} s; see `journalctl -u keepalived` there"))])
        time.sleep(_VIP_POLL)
    report(f"{to.name}: took the VIP {vip.address} over after {time.monotonic() - started:.2f} s")
