"""One apiserver out of every load balancer before it stops, back in only once it is ready.

The load balancers are haproxy on every LB host (when the cluster has a VIP; backend
``kube-apiserver``, servers named by master) and the node-local nginx on every node-proxy
host (servers marked by a trailing ``# <name>`` comment in its nginx.conf).

- ``take_out``: refuses, before touching anything, when some load balancer would be left
  without another serving apiserver; tests the new nginx.conf files (``nginx -t``). Then on
  every host at once: haproxy ``state drain`` (no new connections), wait up to
  ``drain_seconds`` for the server's sessions to end, ``state maint``; nginx.conf rendered
  with the server marked ``down``, written (backed up), reloaded, and waited for until a new
  worker runs. The sessions still open after ``drain_seconds`` (watches) stay until the
  apiserver itself ends them as it stops.
- ``put_back``: waits for the apiserver's own ``/readyz``; then on every host at once nginx
  without ``down`` and haproxy ``state ready``; returns once every haproxy's health checks
  report it UP. (haproxy serves a server again as soon as it leaves maintenance, before a
  check: hence /readyz first.)

Both are idempotent. Parsing is pure (``parse_show_stat``, ``parse_node_proxy_rotation``,
``refusal``) and tested without hosts.
"""

from __future__ import annotations

import asyncio
import csv
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from kubeha.access import ClusterAccess
from kubeha.errors import HostError, InputError, KubehaError
from kubeha.hosts import BackupSet, HostConnection
from kubeha.lb.apply import HAPROXY_API_FUNCTION, _values, check_configs
from kubeha.lb.plan import NGINX, ManagedConfig, node_proxy_hosts
from kubeha.model import Cluster
from kubeha.render import HAPROXY_ADMIN_SOCKET, render_node_proxy_conf

T = TypeVar("T")

HAPROXY_BACKEND = "kube-apiserver"
NGINX_PID_FILE = "/run/nginx.pid"  # as the rendered nginx.conf says
OUT_STATES = frozenset({"MAINT", "DRAIN"})  # haproxy sends no new connection there
_POLL = 0.2  # the wait for /readyz
_NGINX_WORKER_TIMEOUT = 10.0
_COMMAND_TIMEOUT = 30.0  # SSH exec and a python3 start on a host under heavy load take seconds

# $1 socket, $2 command: its answer.
_HAPROXY_API_SCRIPT = HAPROXY_API_FUNCTION + 'api "$1" "$2"'
# $1 socket, $2 backend, $3 server, $4 state to set (drain, ready), $5 what to wait for
# (sessions: none left; up: status UP), $6 at most this many milliseconds, $7 state to set
# then (maint) or "-". Prints the final `show stat`. One SSH round trip per host, however
# long the wait: on a loaded host each one takes a second or more.
_SET_AND_WAIT_SCRIPT = HAPROXY_API_FUNCTION + """sock=$1 backend=$2 server=$3
column() {
  api "$sock" "show stat" | awk -F, -v px="$backend" -v sv="$server" -v col="$1" '
    NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
    $1 == px && $2 == sv && c { print $c }'
}
set_state() {
  answer=$(api "$sock" "set server $backend/$server state $1") || exit 1
  if [ -n "$(printf %s "$answer" | tr -d '[:space:]')" ]; then
    echo "haproxy refused \\`set server $backend/$server state $1\\`: $answer" >&2
    exit 2
  fi
}
set_state "$4"
end=$(( $(date +%s%3N) + $6 ))
while [ "$(date +%s%3N)" -lt "$end" ]; do
  case $5 in
    sessions) [ "$(column scur)" = 0 ] && break ;;
    up) [ "$(column status)" = UP ] && break ;;
  esac
  sleep 0.1
done
[ "$7" = - ] || set_state "$7"
api "$sock" "show stat"
"""


class DrainRefused(KubehaError):
    """Taking an apiserver out would leave a load balancer without another one to serve."""


# ---- pure parsing ------------------------------------------------------------------------


@dataclass(frozen=True)
class HaproxyServer:
    status: str  # "UP", "DOWN", "MAINT", "DRAIN", "NOLB", "UP 1/3" (UP, a check failed), "DOWN 1/2" (rising)
    sessions: int  # current sessions (scur)


def _status(raw: str) -> str:
    """``MAINT(via b/s)``, ``MAINT (resolution)`` -> ``MAINT``; others as haproxy says them."""
    raw = " ".join(raw.split())
    match = re.match(r"(MAINT|DRAIN)\b", raw)
    return match.group(1) if match else raw


def parse_show_stat(text: str, backend: str = HAPROXY_BACKEND) -> dict[str, HaproxyServer]:
    """The servers of ``backend`` in haproxy's ``show stat`` CSV: name -> status and sessions."""
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if header is None:
        raise ValueError(f"no `show stat` header in haproxy's answer: {text.strip()[:200]!r}")
    rows = csv.DictReader([lines[header][2:], *(line for line in lines[header + 1:] if line.strip())])
    return {row["svname"]: HaproxyServer(_status(row["status"]), int(row["scur"] or 0))
            for row in rows
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND")}


_NGINX_SERVER = re.compile(
    r"^\s*server\s+(?P<address>\S+?):(?P<port>\d+)(?P<params>[^;#]*);\s*#\s*(?P<name>\S+)\s*$")


@dataclass(frozen=True)
class NodeProxyServer:
    """A named server line of a rendered node-local nginx.conf."""

    name: str
    address: str
    port: int
    in_rotation: bool  # not marked ``down``


def parse_node_proxy_servers(text: str) -> tuple[NodeProxyServer, ...]:
    """The named servers of a rendered node-local nginx.conf, in the file's order."""
    matches = (_NGINX_SERVER.match(line) for line in text.splitlines())
    return tuple(NodeProxyServer(m.group("name"), m.group("address"), int(m.group("port")),
                                 "down" not in m.group("params").split())
                 for m in matches if m)


def parse_node_proxy_rotation(text: str) -> dict[str, bool]:
    """The named servers of a rendered node-local nginx.conf: name -> in rotation (not ``down``)."""
    return {server.name: server.in_rotation for server in parse_node_proxy_servers(text)}


@dataclass(frozen=True)
class BackendStates:
    """One look at every load balancer."""

    haproxy: Mapping[str, Mapping[str, str]]  # LB host -> server -> haproxy status
    node_proxies: Mapping[str, Mapping[str, bool]]  # node-proxy host -> server -> in rotation

    def ready_servers(self, lb_host: str) -> set[str]:
        """The servers that haproxy sends new connections to (UP, a failed check or not)."""
        return {s for s, status in self.haproxy[lb_host].items() if status.partition(" ")[0] == "UP"}

    def out_everywhere(self, server: str) -> bool:
        """Taken out of every haproxy (MAINT or DRAIN) and every node proxy (``down``); a
        load balancer that does not know the server counts as out."""
        return (all(servers.get(server, "MAINT") in OUT_STATES for servers in self.haproxy.values())
                and not any(servers.get(server, False) for servers in self.node_proxies.values()))

    def _in_every_node_proxy(self, server: str) -> bool:
        return all(servers.get(server, False) for servers in self.node_proxies.values())

    def serving_everywhere(self, server: str) -> bool:
        """Sent new connections by every haproxy (UP, a failed check or not) and in rotation in
        every node proxy: what clients see, with a check that failed once under load left out."""
        return all(server in self.ready_servers(lb) for lb in self.haproxy) and self._in_every_node_proxy(server)

    def in_everywhere(self, server: str) -> bool:
        """UP (every check passing) in every haproxy and in rotation in every node proxy."""
        return (all(servers.get(server) == "UP" for servers in self.haproxy.values())
                and self._in_every_node_proxy(server))


def refusal(states: BackendStates, server: str) -> str | None:
    """Why taking ``server`` out must not happen (one line naming the load balancers), or None.

    A load balancer where the server is out already is left alone, so taking out twice is fine.
    """
    lbs: dict[str, list[str]] = {}  # the other servers' states -> the LB hosts left with them
    for lb, servers in states.haproxy.items():
        if server in servers and servers[server] not in OUT_STATES and not states.ready_servers(lb) - {server}:
            others = ", ".join(f"{s} {st}" for s, st in servers.items() if s != server) or "none"
            lbs.setdefault(others, []).append(lb)
    reasons = [f"the haproxy on {', '.join(hosts)} would have no other UP apiserver (others: {others})"
               for others, hosts in lbs.items()]
    proxies = [host for host, rotation in states.node_proxies.items()
               if rotation.get(server) and not any(in_ for s, in_ in rotation.items() if s != server)]
    if proxies:
        reasons.append(f"the node-local proxy on {', '.join(proxies)} would have no other apiserver in rotation")
    if not reasons:
        return None
    return (f"refusing to take {server} out of the load balancers: {'; '.join(reasons)}; "
            "bring another apiserver back first (nothing was changed)")


# ---- on the hosts ------------------------------------------------------------------------


async def haproxy_api(conn: HostConnection, command: str) -> str:
    """``command``'s answer from the host's haproxy runtime API."""
    done = await conn.run(["sh", "-c", _HAPROXY_API_SCRIPT, "sh", str(HAPROXY_ADMIN_SOCKET), command],
                          check=False, timeout=_COMMAND_TIMEOUT)
    if done.exit_status != 0:
        why = " ".join((done.stderr or done.stdout).split())[-300:] or f"exit status {done.exit_status}"
        raise HostError(f"{conn.name}: haproxy's runtime API at {HAPROXY_ADMIN_SOCKET} did not answer "
                        f"`{command}`: {why}")
    return done.stdout


async def _haproxy_servers(conn: HostConnection) -> dict[str, HaproxyServer]:
    answer = await haproxy_api(conn, "show stat")
    try:
        return parse_show_stat(answer)
    except ValueError as e:
        raise HostError(f"{conn.name}: {e}") from None


async def _set_and_wait(conn: HostConnection, server: str, state: str, until: str, seconds: float,
                        then: str | None = None) -> HaproxyServer:
    """Set the server's ``state``; wait on the host up to ``seconds`` for ``until``
    (``sessions``: none left, ``up``: status UP); set ``then`` if given. The server as
    haproxy shows it at the end."""
    done = await conn.run(["sh", "-c", _SET_AND_WAIT_SCRIPT, "sh", str(HAPROXY_ADMIN_SOCKET), HAPROXY_BACKEND,
                           server, state, until, str(max(0, round(seconds * 1000))), then or "-"],
                          check=False, timeout=max(seconds, 0) + _COMMAND_TIMEOUT)
    if done.exit_status != 0:
        why = " ".join((done.stderr or done.stdout).split())[-300:] or f"exit status {done.exit_status}"
        raise HostError(f"{conn.name}: setting {server} to {state} in haproxy failed: {why}")
    try:
        servers = parse_show_stat(done.stdout)
    except ValueError as e:
        raise HostError(f"{conn.name}: {e}") from None
    if server not in servers:
        raise HostError(f"{conn.name}: haproxy's backend {HAPROXY_BACKEND} has no server {server}")
    return servers[server]


def _haproxy_hosts(cluster: Cluster) -> list[str]:
    return [h.name for h in cluster.lb_hosts] if cluster.vip is not None else []


def _proxy_hosts(cluster: Cluster) -> list[str]:
    return [h.name for h in node_proxy_hosts(cluster)]


def _run_all(access: ClusterAccess, hosts: list[str],
             action: Callable[[HostConnection], Awaitable[T]]) -> dict[str, T]:
    return _values(access.run_all(action, hosts=hosts)) if hosts else {}


def _read_states(access: ClusterAccess, cluster: Cluster) -> tuple[BackendStates, dict[str, bytes | None]]:
    lbs, proxies = _haproxy_hosts(cluster), _proxy_hosts(cluster)
    conf = cluster.paths.node_proxy_conf

    async def look(conn: HostConnection) -> tuple[dict[str, HaproxyServer] | None, bytes | None]:
        servers, content = await asyncio.gather(
            _haproxy_servers(conn) if conn.name in lbs else asyncio.sleep(0),
            conn.get_file(conf) if conn.name in proxies else asyncio.sleep(0))
        return servers, content

    looked = _run_all(access, list(dict.fromkeys(lbs + proxies)), look)
    haproxy = {h: {s: v.status for s, v in looked[h][0].items()} for h in lbs}  # type: ignore[union-attr]
    files = {h: looked[h][1] for h in proxies}
    rotation = {h: parse_node_proxy_rotation(c.decode("utf-8", "replace")) if c is not None else {}
                for h, c in files.items()}
    return BackendStates(haproxy, rotation), files


def backend_states(access: ClusterAccess, cluster: Cluster) -> BackendStates:
    """Every haproxy's server states and every node proxy's rotation, read in parallel."""
    return _read_states(access, cluster)[0]


def _require_master(cluster: Cluster, server: str) -> None:
    names = {m.name for m in cluster.masters}
    if server not in names:
        raise InputError(f"{server} is not a master of cluster {cluster.name} "
                         f"(masters: {', '.join(sorted(names)) or 'none'})")


def _new_confs(cluster: Cluster, files: Mapping[str, bytes | None],
               change: Callable[[set[str]], set[str]]) -> dict[str, bytes]:
    """Each proxy host's nginx.conf with ``change`` applied to its set of ``down`` servers;
    only the hosts where it differs from ``files``. The servers stay the ones the file
    lists: a drain moves a server in or out of rotation, never adds or drops one (an
    operation adding a master lists it before the inventory names it a master)."""
    missing = [h for h, c in files.items() if c is None]
    if missing:
        raise HostError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
                        f"{cluster.paths.node_proxy_conf}: run `kubeha lb apply` first (nothing was changed)")
    wanted = {}
    for host, content in files.items():
        assert content is not None
        servers = parse_node_proxy_servers(content.decode("utf-8", "replace"))
        down = {s.name for s in servers if not s.in_rotation}
        new = render_node_proxy_conf(cluster, [(s.name, s.address, s.port) for s in servers] or None,
                                     down=sorted(change(down))).encode()
        if new != content:
            wanted[host] = new
    return wanted


# Reloads nginx and waits until a worker runs that was not there before: the new config
# serves every new connection from then on (old workers only finish theirs). $1: pid file,
# $2: seconds to wait.
_NGINX_RELOAD_SCRIPT = """workers() { ps -o pid= --ppid "$(cat "$1" 2>/dev/null)" 2>/dev/null | tr '\\n' ' '; }
old=" $(workers "$1") "
systemctl reload nginx || exit 1
end=$(( $(date +%s) + $2 ))
while :; do
  for pid in $(workers "$1"); do
    case $old in *" $pid "*) ;; *) exit 0 ;; esac
  done
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "nginx started no new worker within $2 s of systemctl reload nginx; see /var/log/nginx/error.log" >&2
    exit 1
  fi
  sleep 0.05
done"""


async def _gather(*jobs: Awaitable[None]) -> None:
    """Every job to its end; then the first error, if any."""
    for result in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


def _carry_out(access: ClusterAccess, cluster: Cluster, server: str, taking_out: bool, confs: Mapping[str, bytes],
               backup: BackupSet, lbs: list[str], haproxy: Callable[[HostConnection], Awaitable[None]]) -> None:
    """Test every changed nginx.conf first (nothing changes if one is rejected); then on every
    host at once: ``haproxy(conn)`` on the LB hosts ``lbs``, and where its nginx.conf changes,
    write it (backed up), reload nginx and wait for a new worker."""
    path = cluster.paths.node_proxy_conf
    if confs:
        check_configs(access, (ManagedConfig(cluster.host(h), NGINX, path, c) for h, c in confs.items()))

    async def nginx(conn: HostConnection) -> None:
        await conn.put_file(path, confs[conn.name], backup=backup)
        done = await conn.run(["sh", "-c", _NGINX_RELOAD_SCRIPT, "sh", NGINX_PID_FILE,
                               str(int(_NGINX_WORKER_TIMEOUT))], check=False, timeout=_NGINX_WORKER_TIMEOUT + _COMMAND_TIMEOUT)
        if done.exit_status != 0:
            why = " ".join(done.stderr.split())[-300:] or f"exit status {done.exit_status}"
            raise HostError(f"{conn.name}: reloading nginx with {server} {'out' if taking_out else 'back'} "
                            f"failed: {why}")

    async def act(conn: HostConnection) -> None:
        await _gather(*([haproxy(conn)] if conn.name in lbs else []), *([nginx(conn)] if conn.name in confs else []))

    _run_all(access, list(dict.fromkeys([*lbs, *confs])), act)


def take_out(access: ClusterAccess, cluster: Cluster, server: str, backup: BackupSet, *,
             drain_seconds: float = 3.0) -> None:
    """Take the apiserver ``server`` (a master's name) out of every load balancer.

    Refuses with DrainRefused, before changing anything, when a load balancer would be left
    without another serving apiserver. haproxy drains while nginx reloads: both stop sending
    new connections to the server at about the same time.
    """
    _require_master(cluster, server)
    states, files = _read_states(access, cluster)
    why = refusal(states, server)
    if why:
        raise DrainRefused(why)
    confs = _new_confs(cluster, files, lambda down: down | {server})
    lbs = [h for h, servers in states.haproxy.items() if server in servers and servers[server] != "MAINT"]

    async def drain(conn: HostConnection) -> None:
        now = await _set_and_wait(conn, server, "drain", "sessions", drain_seconds, then="maint")
        if now.status != "MAINT":
            raise HostError(f"{conn.name}: haproxy shows {server} {now.status} after `state maint`")

    _carry_out(access, cluster, server, True, confs, backup, lbs, drain)


def wait_ready(access: ClusterAccess, cluster: Cluster, server: str, deadline: float) -> None:
    """Return once the apiserver of master ``server`` answers /readyz with 200 (HostError at
    ``deadline``, a ``time.monotonic()`` value)."""
    address = cluster.host(server).address
    url = f"https://{address}:{cluster.apiserver_port}"
    client = access.http(url, timeout=2.0)
    last = "no answer yet"
    try:
        while True:
            try:
                response = client.get("/readyz")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except Exception as e:  # httpx errors, a tunnel that is not up yet: not ready yet
                last = f"{type(e).__name__}: {e}"[:200]
            if time.monotonic() > deadline:
                raise HostError(f"{server}: the apiserver at {url} did not answer /readyz with 200 in time "
                                f"({last}); it stays out of the load balancers")
            time.sleep(_POLL)
    finally:
        client.close()


def put_back(access: ClusterAccess, cluster: Cluster, server: str, backup: BackupSet, *,
             timeout: float = 60.0) -> None:
    """Put ``server`` back into every load balancer once its apiserver answers /readyz; return
    when every haproxy's health checks report it UP (HostError naming host and server after
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    _require_master(cluster, server)
    wait_ready(access, cluster, server, deadline)
    states, files = _read_states(access, cluster)
    confs = _new_confs(cluster, files, lambda down: down - {server})
    lbs = [h for h, servers in states.haproxy.items() if server in servers]

    async def ready(conn: HostConnection) -> None:
        # `ready` on every LB, even where the server is not out: haproxy shows a drained
        # server that fails its checks as DOWN, not DRAIN
        now = await _set_and_wait(conn, server, "ready", "up", deadline - time.monotonic())
        if now.status != "UP":
            raise HostError(f"{conn.name}: haproxy still reports {server} {now.status} {timeout:g} s after "
                            "put_back began (its health check of /readyz does not pass)")

    _carry_out(access, cluster, server, False, confs, backup, lbs, ready)


__all__ = [
    "HAPROXY_BACKEND", "BackendStates", "DrainRefused", "HaproxyServer", "NodeProxyServer", "backend_states",
    "haproxy_api", "parse_node_proxy_rotation", "parse_node_proxy_servers", "parse_show_stat", "put_back",
    "refusal", "take_out", "wait_ready",
]
