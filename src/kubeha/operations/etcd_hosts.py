"""The host side of an etcd member: its files, its process, its data dir and its log.

A member runs as a static pod on a kubeadm master (its kubelet runs the manifests in
``paths.manifests_dir``), and as the systemd unit ``etcd.service`` everywhere else (kubeasz,
and kubeadm hosts that are no master: no kubelet of theirs runs static pods). Both forms use
the layout's paths (certs, data dir), rendered by ``render_etcd``.

The pure decisions (which form, which log line says why etcd is down) are functions of
their own; the rest are synchronous commands through ``ClusterAccess``. Every error a user
can hit is one line naming the host and the cause; no message carries a key.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from pathlib import PurePosixPath

from kubeha.access import ClusterAccess
from kubeha.errors import HostError, InputError
from kubeha.etcd.errors import EtcdError
from kubeha.hosts import BackupSet, CommandFailed
from kubeha.model import Cluster, Host, Role
from kubeha.pki.cluster import CERT_MODE, ClusterAuthorities, PkiFiles, etcd_member_files
from kubeha.render.controlplane import ETCD_CLIENT_PORT, render_etcd

STATIC_POD = "static-pod"
UNIT = "unit"
UNIT_NAME = "etcd"
LOG_LINES = 50
POLL_SECONDS = 0.5
STATUS_TIMEOUT = 2.0
_MAX_CAUSE = 300
# Where a kubelet writes a static pod's output: the kubeha lab's kubelet
# (<namespace>_<pod>/<container>.log) and the real one (<namespace>_<pod>-<node>_<uid>/<container>/<n>.log).
POD_LOG_GLOBS = ("/var/log/pods/kube-system_etcd*/etcd.log", "/var/log/pods/kube-system_etcd*/etcd/*.log")
_SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class EtcdHostError(HostError):
    """An etcd member's files, process or data on its host are not as they must be."""


# ---- pure ----------------------------------------------------------------------------------


def member_runs_as(cluster: Cluster, host: Host) -> str:
    """``"static-pod"`` on a kubeadm master (its kubelet runs static pods), else ``"unit"``."""
    if cluster.paths.manifests_dir is not None and host.has(Role.MASTER):
        return STATIC_POD
    return UNIT


def member_file(cluster: Cluster, host: Host) -> PurePosixPath:
    """The member's static pod manifest or its unit file."""
    manifests = cluster.paths.manifests_dir
    if member_runs_as(cluster, host) == STATIC_POD and manifests is not None:
        return manifests / f"{UNIT_NAME}.yaml"
    return cluster.paths.units_dir / f"{UNIT_NAME}.service"


def member_files(cluster: Cluster, host: Host, auth: ClusterAuthorities, initial_cluster: str) -> PkiFiles:
    """Everything a joining member needs on its host, in the order to write it: the etcd CA
    cert (never its key), the member's certs and keys, and last its manifest or unit (a
    static pod starts as soon as its manifest is there)."""
    files: PkiFiles = {cluster.paths.etcd_ca.cert: (auth.etcd_ca.cert_pem, CERT_MODE)}
    files.update(etcd_member_files(cluster, host, auth))
    rendered = render_etcd(cluster, host, initial_cluster_state="existing", initial_cluster=initial_cluster,
                           as_unit=member_runs_as(cluster, host) == UNIT)
    files[rendered.path] = (rendered.content.encode(), rendered.mode)
    return files


# Severity of a log line: 3 fatal, 2 error, 1 warning, 0 the rest.
_LEVELS = {"fatal": 3, "panic": 3, "dpanic": 3, "error": 2, "warn": 1, "warning": 1}
_CAPNSLOG_LEVELS = {"C": 3, "F": 3, "P": 3, "E": 2, "W": 1}
# etcd 3.4's default logger: "2026-11-23 12:31:53.414111 C | etcdmain: cannot access ..."
_CAPNSLOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ([A-Z]) \| (?:[\w./-]+: )?(.*)$")
# What log collectors put before a program's own line.
_PREFIXES = (
    re.compile(r"^\d{4}-\d\d-\d\dT\S+\s+"),  # ISO timestamp (kubelet pod logs, the lab's journal)
    re.compile(r"^(?:stdout|stderr) [FP] "),  # CRI log stream and tag
    re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ "),  # journalctl's short format: date and host
    re.compile(r"^[\w.@-]+(?:\[\d+\])?: "),  # the identifier: "etcd[123]: "
)
_BOOKKEEPING = ("-- No entries --", "-- Logs begin", "-- Journal begins")


def _strip_prefixes(line: str) -> str:
    for prefix in _PREFIXES:
        line = prefix.sub("", line, count=1)
    return line.strip()


def parse_log_line(line: str) -> tuple[int, str] | None:
    """(severity, message) of one etcd log line, JSON (zap) or capnslog; None for other lines."""
    brace = line.find("{")
    if brace >= 0:
        try:
            entry = json.loads(line[brace:])
        except ValueError:
            entry = None
        if isinstance(entry, dict) and "level" in entry and "msg" in entry:
            message = str(entry["msg"])
            if entry.get("error"):
                message += f": {entry['error']}"
            return _LEVELS.get(str(entry["level"]).lower(), 0), message
    match = _CAPNSLOG.search(line)
    if match:
        return _CAPNSLOG_LEVELS.get(match[1], 0), match[2]
    return None


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_CAUSE else text[: _MAX_CAUSE - 3] + "..."


def last_error_line(lines: Iterable[str]) -> str | None:
    """Why etcd stopped, from its log (oldest line first): the last fatal line, else the last
    error, else the last line that is not etcd's own info (a warning, a line from the
    service manager or the kubelet); None when there is nothing to tell."""
    best: dict[int, str] = {}
    other: str | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(_BOOKKEEPING):
            continue
        parsed = parse_log_line(line)
        if parsed is None:
            other = _strip_prefixes(line) or other
            continue
        severity, message = parsed
        if severity >= 2:
            best[severity] = message
        elif severity == 1:
            other = message
    for severity in (3, 2):
        if severity in best:
            return _one_line(best[severity])
    return _one_line(other) if other else None


def retire_script() -> str:
    """sh script: ``$1`` the data dir, ``$2`` the suffix. Moves the data dir aside to
    ``<dir>.retired-<suffix>``; a data dir that is a mount point of its own (a disk for etcd)
    cannot move, so its ``member`` dir moves to ``member.retired-<suffix>`` on that disk
    (etcd ignores it). Prints where the data went; nothing to move is no error."""
    return r"""set -e
dir=$1 suffix=$2
[ -e "$dir" ] || exit 0
if awk -v d="$dir" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo; then
  [ -e "$dir/member" ] || exit 0
  from="$dir/member" to="$dir/member.retired-$suffix"
else
  from="$dir" to="$dir.retired-$suffix"
fi
if [ -e "$to" ]; then echo "$to already exists" >&2; exit 1; fi
mv -- "$from" "$to"
echo "$to"
"""


# ---- on the host ---------------------------------------------------------------------------

# The pids of etcd processes in this shell's network namespace: the host's own etcd (a
# static pod has hostNetwork), not another one a shared process table may show.
_ETCD_PIDS = r"""self=$(readlink /proc/self/ns/net)
for d in /proc/[0-9]*; do
  { read -r comm <"$d/comm"; } 2>/dev/null || continue
  [ "$comm" = etcd ] || continue
  [ "$(readlink "$d/ns/net" 2>/dev/null)" = "$self" ] && echo "${d#/proc/}"
done
exit 0
"""

# Make the data dir if missing, 0700 root:root; touch nothing that is already right (so a
# read-only data dir surfaces when etcd starts, with etcd's own words).
_DATA_DIR = r"""set -e
[ -d "$1" ] || mkdir -p -m 0700 -- "$1"
[ "$(stat -c %a -- "$1")" = 700 ] || chmod 0700 -- "$1"
[ "$(stat -c %u:%g -- "$1")" = 0:0 ] || chown 0:0 -- "$1"
"""

_POD_LOG = r"""f=$(ls -1t -- """ + " ".join(POD_LOG_GLOBS) + r""" 2>/dev/null | head -n 1)
[ -z "$f" ] || tail -n "$1" -- "$f"
"""


def _sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def _data_dir(cluster: Cluster) -> PurePosixPath:
    return cluster.paths.etcd_data_dir


def _client_url(host: Host) -> str:
    return f"https://{host.address}:{ETCD_CLIENT_PORT}"


def data_dir_holds_member(access: ClusterAccess, cluster: Cluster, host: Host) -> bool:
    """Whether ``<data dir>/member`` exists: the host is or was a member of some cluster."""
    return access.stat(host, _data_dir(cluster) / "member") is not None


def prepare_member(access: ClusterAccess, cluster: Cluster, host: Host, auth: ClusterAuthorities,
                   initial_cluster: str, backup: BackupSet) -> None:
    """Put a joining member's CA cert, certs, keys (0600 root:root) and its manifest or unit
    (``initial-cluster-state=existing``, ``initial_cluster``) on ``host``, each write backed
    up in ``backup``; the data dir is made 0700. Refused if the data dir holds a member."""
    data_dir = _data_dir(cluster)
    if data_dir_holds_member(access, cluster, host):
        raise EtcdHostError(
            f"{host.name} already holds etcd data in {data_dir}: it is or was a member of a cluster; "
            f"if it is not a member now, move {data_dir} aside on {host.name} and try again")
    files = member_files(cluster, host, auth, initial_cluster)
    *secrets, last = files.items()
    for path, (content, mode) in secrets:
        access.put_file(host, path, content, mode=mode, owner="root:root", backup=backup)
    try:
        access.run(host, _sh(_DATA_DIR, str(data_dir)), check=True)
    except CommandFailed as e:
        raise EtcdHostError(f"{host.name}: cannot make the etcd data dir {data_dir}: "
                            f"{e.stderr_tail or f'exit status {e.exit_status}'}") from e
    path, (content, mode) = last
    access.put_file(host, path, content, mode=mode, owner="root:root", backup=backup)


def start_member(access: ClusterAccess, cluster: Cluster, host: Host) -> None:
    """Start the member: a unit is reloaded, enabled and started (not waited for: see
    ``wait_member_serving``); a static pod started when its manifest was written."""
    if member_runs_as(cluster, host) == STATIC_POD:
        return
    for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME],
                    ["systemctl", "start", "--no-block", UNIT_NAME]):
        access.run(host, command, check=True)


def member_pids(access: ClusterAccess, host: Host) -> list[int]:
    """The pids of the host's etcd processes."""
    out = access.run(host, _sh(_ETCD_PIDS), check=True).stdout
    return [int(word) for word in out.split() if word.isdigit()]


def member_process_running(access: ClusterAccess, cluster: Cluster, host: Host) -> bool:
    """Whether an etcd process runs on ``host`` (either form)."""
    return bool(member_pids(access, host))


def wait_member_serving(access: ClusterAccess, cluster: Cluster, host: Host, timeout: float = 60.0) -> None:
    """Return once the member answers status on its client URL (a learner does too); after
    ``timeout`` raise an error with the cause ``why_member_down`` finds."""
    url = _client_url(host)
    client = access.etcd_member(host)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.status(url, timeout=STATUS_TIMEOUT)
                return
            except EtcdError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
    finally:
        client.close()
    raise EtcdHostError(f"{why_member_down(access, cluster, host)} (no answer on {url} within {timeout:g} s)")


def member_log(access: ClusterAccess, cluster: Cluster, host: Host, lines: int = LOG_LINES) -> list[str]:
    """The last lines of the member's log: its unit's journal, or its static pod's log (and
    when that is empty, the kubelet's lines about etcd: why the pod did not start)."""
    if member_runs_as(cluster, host) == UNIT:
        result = access.run(host, ["journalctl", "-u", UNIT_NAME, "-n", str(lines), "--no-pager"])
        return result.stdout.splitlines()
    out = access.run(host, _sh(_POD_LOG, str(lines))).stdout.splitlines()
    if out:
        return out
    kubelet = access.run(host, ["journalctl", "-u", "kubelet", "-n", "200", "--no-pager"]).stdout
    return [line for line in kubelet.splitlines() if "etcd" in line][-lines:]


def why_member_down(access: ClusterAccess, cluster: Cluster, host: Host) -> str:
    """One line: why etcd on ``host`` does not serve, from its files, process and log."""
    name = host.name
    file = member_file(cluster, host)
    running = member_process_running(access, cluster, host)
    cause = last_error_line(member_log(access, cluster, host))
    source = (f"journalctl -u {UNIT_NAME}" if member_runs_as(cluster, host) == UNIT
              else "its static pod log under /var/log/pods")
    if running:
        return f"etcd on {name} runs but does not serve" + (f"; its log: {cause}" if cause else "")
    if access.stat(host, file) is None:
        return f"etcd on {name} is not set up: {file} is missing"
    if cause:
        return f"etcd on {name} exits: {cause}"
    return f"etcd on {name} is not running and {source} says nothing"


def stop_member(access: ClusterAccess, cluster: Cluster, host: Host, backup: BackupSet,
                timeout: float = 30.0) -> None:
    """Stop etcd on ``host`` and wait for its process to exit. A unit is disabled and stopped
    (its file kept); a static pod's manifest is removed (backed up in ``backup``).
    Stopping a stopped member does nothing."""
    file = member_file(cluster, host)
    present = access.stat(host, file) is not None
    if member_runs_as(cluster, host) == STATIC_POD:
        if present:
            access.remove_file(host, file, backup=backup)
    elif present:
        access.run(host, ["systemctl", "disable", "--now", UNIT_NAME], check=True)
    else:  # no unit file: stop whatever systemd may still have loaded
        access.run(host, ["systemctl", "stop", UNIT_NAME])
    deadline = time.monotonic() + timeout
    while (pids := member_pids(access, host)):
        if time.monotonic() > deadline:
            how = f"{file} was removed" if member_runs_as(cluster, host) == STATIC_POD else "systemctl stopped it"
            raise EtcdHostError(f"etcd on {host.name} still runs (pid {', '.join(map(str, pids))}) "
                                f"{timeout:g} s after {how}; stop it by hand")
        time.sleep(POLL_SECONDS)


def retire_member_data(access: ClusterAccess, cluster: Cluster, host: Host, suffix: str) -> None:
    """Move the data dir aside to ``<data dir>.retired-<suffix>`` (kept, never deleted); a
    data dir that is a mount point keeps it on its disk as ``member.retired-<suffix>``."""
    if not _SUFFIX.match(suffix):
        raise InputError(f"{suffix!r} is not a plain name to retire etcd data under")
    data_dir = _data_dir(cluster)
    try:
        access.run(host, _sh(retire_script(), str(data_dir), suffix), check=True)
    except CommandFailed as e:
        raise EtcdHostError(f"{host.name}: cannot move the etcd data in {data_dir} aside: "
                            f"{e.stderr_tail or f'exit status {e.exit_status}'}") from e


def wipe_new_member_data(access: ClusterAccess, cluster: Cluster, host: Host) -> None:
    """Delete ``<data dir>/member``: only for a learner that never became a voter (the
    rollback of a failed join), whose data is a copy of the cluster's and nobody else's."""
    member = _data_dir(cluster) / "member"
    try:
        access.run(host, ["rm", "-rf", "--", str(member)], check=True)
    except CommandFailed as e:
        raise EtcdHostError(f"{host.name}: cannot delete {member}: "
                            f"{e.stderr_tail or f'exit status {e.exit_status}'}") from e
