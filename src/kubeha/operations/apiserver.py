"""Changing a flag of one apiserver without a failed request: out of every load balancer,
edit its manifest or unit, wait for the new process to be ready, back in.

The running process is found by the port it listens on and judged by its own command line
(``components.listener``), so "done" means the apiserver that serves runs with
the flag, not only that a file says so; a kubelet that has not yet replaced a static pod
is waited for.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import PurePosixPath

from kubeha.access import ClusterAccess
from kubeha.discover.configs import Flags, parse_flags
from kubeha.discover.discover import component_command, component_file
from kubeha.errors import KubehaError
from kubeha.hosts import BackupSet
from kubeha.lb.drain import backend_states, put_back, take_out
from kubeha.model import Cluster, Host, Layout
from kubeha.operations.components import listener
from kubeha.render.flags import replace_flag

APISERVER = "kube-apiserver"
RESTART_TIMEOUT = 90.0
_POLL = 0.5


class ApiserverNotRestarted(KubehaError):
    """The apiserver did not come back with the new flags in time."""


def running_flags(access: ClusterAccess, cluster: Cluster, host: Host) -> Flags | None:
    """The flags of the apiserver process that serves (None when none listens)."""
    return access.fact(host, listener(cluster.apiserver_port, skip_loopback=True)).flags


def file_flags(access: ClusterAccess, cluster: Cluster, host: Host) -> Flags | None:
    path = component_file(cluster.layout, APISERVER)
    text = access.get_file(host, path)
    if text is None:
        return None
    return parse_flags(component_command(cluster.layout, text.decode(), f"{host.name}:{path}"))


def write_flag(access: ClusterAccess, cluster: Cluster, host: Host, flag: str, value: str,
               backup: BackupSet) -> PurePosixPath:
    """Set ``--flag=value`` in the apiserver's manifest or unit (backed up first)."""
    path = component_file(cluster.layout, APISERVER)
    text = access.get_file(host, path)
    if text is None:
        raise KubehaError(f"{host.name} has no {path}: is it a master of this layout ({cluster.layout.value})?")
    changed = replace_flag(text.decode(), flag, value, f"{host.name}:{path}")
    access.put_file(host, path, changed.encode(), backup=backup)
    return path


def restart(access: ClusterAccess, cluster: Cluster, host: Host) -> None:
    """Make the apiserver re-read its file: a unit is restarted; a static pod is replaced by
    its kubelet when the manifest changes."""
    if cluster.layout is Layout.KUBEASZ:
        access.run(host, ["systemctl", "daemon-reload"], check=True)
        access.run(host, ["systemctl", "restart", APISERVER], check=True)


def wait_running_with(access: ClusterAccess, cluster: Cluster, host: Host, flag: str, value: str,
                      timeout: float = RESTART_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        flags = running_flags(access, cluster, host)
        if flags is not None and flags.get(flag) == value:
            return
        if time.monotonic() > deadline:
            running = "no apiserver listens" if flags is None else f"it runs with --{flag}={flags.get(flag)}"
            raise ApiserverNotRestarted(f"the apiserver on {host.name} did not restart with --{flag}={value} "
                                        f"within {timeout:.0f} s ({running})")
        time.sleep(_POLL)


def change_flag(access: ClusterAccess, cluster: Cluster, host: Host, flag: str, value: str,
                backup: BackupSet) -> None:
    """The whole safe change: out of every LB, edit, restart, wait, back in when ready."""
    take_out(access, cluster, host.name, backup)
    flags = file_flags(access, cluster, host)
    if flags is None or flags.get(flag) != value:
        write_flag(access, cluster, host, flag, value, backup)
        restart(access, cluster, host)
    elif (running_flags(access, cluster, host) or {}).get(flag) != value:
        # the file is as wanted but the apiserver is not: a run killed before the restart, or
        # an apiserver found stopped (one a later step stops for good counts as done before this)
        restart(access, cluster, host)
    wait_running_with(access, cluster, host, flag, value)
    put_back(access, cluster, host.name, backup)


def restore_and_put_back(access: ClusterAccess, cluster: Cluster, host: Host, flag: str,
                         backup: BackupSet) -> None:
    """Undo ``change_flag``: the file as it was, the apiserver restarted on it, back in."""
    take_out(access, cluster, host.name, backup)
    access.restore(host, backup)
    flags = file_flags(access, cluster, host) or {}
    restart(access, cluster, host)
    wait_running_with(access, cluster, host, flag, flags.get(flag, ""))
    put_back(access, cluster, host.name, backup)


def flag_in_effect(access: ClusterAccess, cluster: Cluster, host: Host, flag: str, values: Collection[str]) -> bool:
    """The file and the running apiserver both have ``--flag`` set to one of ``values`` (the
    same one) and it is back in every LB."""
    file = (file_flags(access, cluster, host) or {}).get(flag)
    running = (running_flags(access, cluster, host) or {}).get(flag)
    return (file in values and running == file
            and backend_states(access, cluster).in_everywhere(host.name))
