"""Control-plane components on a host: where each one's file is, how it is restarted, and
how kubeha knows the restart happened and the new process is healthy.

A restart is proven by the process itself: the one listening on the component's port must
have started after the restart was asked for (``ss`` for the pid, ``/proc/<pid>/stat`` for
its start), and must answer its health endpoint. A static pod is restarted the way
`kubectl rollout restart` restarts a Deployment: an annotation naming the restart is
written into its manifest, and the kubelet replaces a pod whose manifest changed. The
annotation stays, so a resumed run recognises a restart it already asked for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

import httpx

from kubeha.access import ClusterAccess
from kubeha.discover.configs import Flags, manifest_command, parse_flags, unit_exec_start
from kubeha.discover.discover import component_file
from kubeha.errors import HostError
from kubeha.etcd.errors import EtcdError
from kubeha.hosts import BackupSet
from kubeha.hosts.facts import Fact
from kubeha.model import Cluster, Host, Role
from kubeha.operations import etcd_hosts
from kubeha.operations.etcd_plan import ETCD_CLIENT_PORT, client_url
from kubeha.render.flags import pod_annotation, replace_flag, with_pod_annotation

APISERVER, CONTROLLER_MANAGER, SCHEDULER, ETCD = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
RESTARTABLE = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER)  # the order they restart in on one host
DEFAULT_RESTART = (APISERVER, CONTROLLER_MANAGER, SCHEDULER)
# the secure ports kube-controller-manager and kube-scheduler serve /healthz on by default
HEALTH_PORTS = {CONTROLLER_MANAGER: 10257, SCHEDULER: 10259}
RESTART_ANNOTATION = "kubeha.io/restarted-by"
RESTART_TIMEOUT = 120.0
_POLL = 0.5
# /proc/<pid>/stat counts in clock ticks from a boot time given in whole seconds
_CLOCK_SLACK = 1.0


class ComponentNotRestarted(HostError):
    """A component did not come back, restarted and healthy, in time."""


@dataclass(frozen=True)
class ListenerProcess:
    now: float  # the host's clock when it was asked
    pid: int | None = None
    started: float | None = None  # epoch seconds, by the host's clock
    argv: tuple[str, ...] = ()

    def started_since(self, since: float) -> bool:
        return self.started is not None and self.started >= since - _CLOCK_SLACK

    @property
    def flags(self) -> Flags | None:
        return parse_flags(list(self.argv)) if self.argv else None


def _listener_script(port: int, skip_loopback: bool) -> str:
    # a node-local proxy may hold 127.0.0.1 on the apiserver's port: skip_loopback passes it over
    keep = "$4 !~ /^127\\./ && $4 !~ /^\\[::1\\]/" if skip_loopback else "1"
    return (f"echo \"now $(date +%s)\"; "
            f"pid=$(ss -Hltnp 'sport = :{port}' | awk '{keep}' | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2); "
            '[ -n "$pid" ] || exit 0; '
            # field 22 of /proc/<pid>/stat is the start in ticks after boot; the comm before it may hold spaces
            "ticks=$(sed 's/.*) //' \"/proc/$pid/stat\" | cut -d' ' -f20); "
            "btime=$(awk '/^btime/ {print $2}' /proc/stat); "
            'echo "pid $pid $((btime + ticks / $(getconf CLK_TCK)))"; '
            'tr "\\0" "\\n" < "/proc/$pid/cmdline" | sed "s/^/arg /"')


def parse_listener(stdout: str) -> ListenerProcess:
    now, pid, started, argv = 0.0, None, None, []
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "now":
            now = float(rest)
        elif word == "pid":
            pid_text, _, start_text = rest.partition(" ")
            pid, started = int(pid_text), float(start_text)
        elif word == "arg" and rest.strip():
            argv.append(rest)
    return ListenerProcess(now, pid, started, tuple(argv))


def listener(port: int, *, skip_loopback: bool = False) -> Fact[ListenerProcess]:
    """The process listening on TCP ``port`` (its pid, start and command line), with the
    host's clock."""
    return Fact(f"process on port {port}", ["sh", "-c", _listener_script(port, skip_loopback)],
                parse_listener)


# ---- where a component is and how it runs -------------------------------------------------------


def file_of(cluster: Cluster, host: Host, component: str) -> PurePosixPath:
    """The component's static pod manifest or unit file on ``host``."""
    if component == ETCD:
        return etcd_hosts.member_file(cluster, host)
    return component_file(cluster.layout, component)


def runs_as_static_pod(cluster: Cluster, host: Host, component: str) -> bool:
    if component == ETCD:
        return etcd_hosts.member_runs_as(cluster, host) == etcd_hosts.STATIC_POD
    return cluster.paths.manifests_dir is not None


def unit_of(component: str) -> str:
    return etcd_hosts.UNIT_NAME if component == ETCD else component


def runs_on(cluster: Cluster, host: Host, component: str) -> bool:
    return host.has(Role.ETCD) if component == ETCD else host.has(Role.MASTER)


def drains_apiserver(cluster: Cluster, host: Host, component: str) -> bool:
    """Whether restarting ``component`` takes the host's apiserver out of every LB first: the
    apiserver itself, and etcd on a master (a stacked apiserver reads its local member and
    is not ready while it restarts)."""
    return component == APISERVER or (component == ETCD and host.has(Role.MASTER))


def file_flags(access: ClusterAccess, cluster: Cluster, host: Host, component: str) -> Flags:
    path = file_of(cluster, host, component)
    text = access.get_file(host, path)
    if text is None:
        return {}
    read = manifest_command if runs_as_static_pod(cluster, host, component) else unit_exec_start
    return parse_flags(read(text.decode(), f"{host.name}:{path}"))


def port_of(access: ClusterAccess, cluster: Cluster, host: Host, component: str) -> int:
    if component == APISERVER:
        return cluster.apiserver_port
    if component == ETCD:
        return ETCD_CLIENT_PORT
    return int(file_flags(access, cluster, host, component).get("secure-port") or HEALTH_PORTS[component])


def process(access: ClusterAccess, cluster: Cluster, host: Host, component: str,
            port: int | None = None) -> ListenerProcess:
    port = port or port_of(access, cluster, host, component)
    return access.fact(host, listener(port, skip_loopback=component == APISERVER))


# ---- restart ------------------------------------------------------------------------------------


def restart_token(operation_id: str, step_id: str) -> str:
    return f"{operation_id}/{step_id}"


def _restart_asked_at(access: ClusterAccess, host: Host, path: PurePosixPath, text: bytes | None,
                      token: str) -> float | None:
    """The manifest's mtime when ``text`` (its content) asks for restart ``token``, else None."""
    if text is None or pod_annotation(text.decode(), RESTART_ANNOTATION) != token:
        return None
    done = access.run(host, ["stat", "-c", "%Y", str(path)], check=True)
    return float(done.stdout.strip())


def static_pod_restarted_at(access: ClusterAccess, cluster: Cluster, host: Host, component: str,
                            token: str) -> float | None:
    """When the manifest was changed to ask for restart ``token`` (its mtime), or None when
    it does not ask for it."""
    path = file_of(cluster, host, component)
    return _restart_asked_at(access, host, path, access.get_file(host, path), token)


def restart(access: ClusterAccess, cluster: Cluster, host: Host, component: str, token: str,
            backup: BackupSet, flags: Mapping[str, str] | None = None) -> float:
    """Ask for the restart, with ``flags`` set in the component's file first; return the
    host time after which the new process must have started."""
    path = file_of(cluster, host, component)
    static_pod = runs_as_static_pod(cluster, host, component)
    text = access.get_file(host, path) if static_pod or flags else None
    if static_pod:
        asked = _restart_asked_at(access, host, path, text, token)
        if asked is not None:
            return asked
    if text is None and (static_pod or flags):
        raise HostError(f"{host.name} has no {path}: does {component} run there?")
    changed = text.decode() if text is not None else ""
    for flag, value in (flags or {}).items():
        changed = replace_flag(changed, flag, value, f"{host.name}:{path}", add_missing=True)
    since = process(access, cluster, host, component).now
    if static_pod:
        access.put_file(host, path, with_pod_annotation(changed, RESTART_ANNOTATION, token,
                                                        f"{host.name}:{path}").encode(), backup=backup)
        return since
    if flags:
        access.put_file(host, path, changed.encode(), backup=backup)
        access.run(host, ["systemctl", "daemon-reload"], check=True)
    access.run(host, ["systemctl", "restart", unit_of(component)], check=True)
    return since


def restart_on_restored_file(access: ClusterAccess, cluster: Cluster, host: Host, component: str,
                             backup: BackupSet, timeout: float = RESTART_TIMEOUT) -> None:
    """Undo ``restart``'s flags: the component's file put back from ``backup`` and the
    component restarted on it (a changed manifest is the kubelet's cue); nothing when the
    file was not changed."""
    since = process(access, cluster, host, component).now
    if not access.restore(host, backup, [file_of(cluster, host, component)]):
        return
    if not runs_as_static_pod(cluster, host, component):
        access.run(host, ["systemctl", "daemon-reload"], check=True)
        access.run(host, ["systemctl", "restart", unit_of(component)], check=True)
    wait_restarted(access, cluster, host, component, since, timeout)


def why_unhealthy(access: ClusterAccess, cluster: Cluster, host: Host, component: str,
                  port: int | None = None) -> str | None:
    """Why the component on ``host`` is not healthy now, or None when it is. The apiserver's
    readiness is judged by the load balancers' put-back, which waits for /readyz."""
    if component == ETCD:
        client = access.etcd_member(host)
        try:
            client.status(client_url(host), timeout=2.0)
        except EtcdError as e:
            return f"etcd does not answer: {e}"
        finally:
            client.close()
        return None
    if component == APISERVER:
        return None
    port = port or port_of(access, cluster, host, component)
    local_port = access.loopback_port(host, port)
    try:
        # the component's serving cert is self-signed unless --tls-cert-file is set; only
        # "ok" is read and nothing is sent, so the peer is not verified
        with httpx.Client(verify=False, timeout=2.0) as client:
            response = client.get(f"https://127.0.0.1:{local_port}/healthz")
    except httpx.HTTPError as e:
        return f"/healthz on port {port}: {type(e).__name__}"
    return None if response.status_code == 200 else f"/healthz on port {port}: HTTP {response.status_code}"


def restarted(access: ClusterAccess, cluster: Cluster, host: Host, component: str, since: float) -> str | None:
    """Why the component is not yet restarted-and-healthy (after ``since``), or None."""
    port = port_of(access, cluster, host, component)  # read once per look: it may come from the file
    now = process(access, cluster, host, component, port)
    if now.pid is None:
        return f"no process listens on port {port}"
    if not now.started_since(since):
        return f"the process listening (pid {now.pid}) started before the restart was asked for"
    return why_unhealthy(access, cluster, host, component, port)


def wait_restarted(access: ClusterAccess, cluster: Cluster, host: Host, component: str, since: float,
                   timeout: float = RESTART_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        why = restarted(access, cluster, host, component, since)
        if why is None:
            return
        if time.monotonic() > deadline:
            raise ComponentNotRestarted(f"{component} on {host.name} did not come back restarted and healthy "
                                        f"within {timeout:.0f} s: {why}")
        time.sleep(_POLL)
