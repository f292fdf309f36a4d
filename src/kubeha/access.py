"""Reaching a cluster: commands and files over SSH, etcd and the API directly or tunnelled.

``ClusterAccess`` is synchronous. asyncssh runs on an event loop in a daemon thread, so
synchronous clients (httpx, the official ``kubernetes`` client) can use SSH tunnels served
by that loop without deadlocking it.

An address is used directly when this machine reaches it (a TCP connect within 0.5 s, or
a refusal, which proves the path works), else through ``forward_local`` on an SSH
connection. ``prefer_tunnel=True`` always tunnels: for an operator whose machine reaches
the hosts' SSH but not their ports 2379/6443 or the VIP in ways a probe cannot tell. A
tunnelled request still verifies the server's certificate against the real address.

Credentials (the etcd client pair and CA, the admin kubeconfig's CA and client pair) come
from a master over SSH, on first use, into a private temporary directory (0700, files
0600) removed on close. They never appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import httpx
from kubernetes.client import ApiClient

from kubeha.errors import HostError, InputError, KubehaError
from kubeha.etcd.gateway import EtcdClient
from kubeha.hosts import (
    BackupEntry, BackupSet, Command, CommandResult, FileStat, Fleet, HostConnection, HostOutcome,
    SshSettings,
)
from kubeha.hosts.facts import Fact, gather_fact
from kubeha.inventory import Inventory
from kubeha.kube import api_client, kubeconfig_credentials
from kubeha.kube.kubeconfig import Credential
from kubeha.model import Host
from kubeha.render.controlplane import ETCD_CLIENT_PORT

T = TypeVar("T")
Address = tuple[str, int]  # (host, port) a client connects to

PROBE_TIMEOUT = 0.5
_TUNNEL_HOST = "127.0.0.1"


class AccessError(KubehaError):
    """Credentials or a way to a service could not be had from the cluster's hosts."""


class TunnelRoutes(httpx.BaseTransport):
    """Sends each request for a tunnelled address to its tunnel's local end.

    The ``sni_hostname`` extension keeps TLS naming (and verifying) the real address; the
    Host header, set when the request was built, keeps it too.
    """

    def __init__(self, inner: httpx.BaseTransport, routes: Mapping[Address, int]) -> None:
        self._inner = inner
        self._routes = routes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        local_port = self._routes.get((url.host, url.port or 443))
        if local_port is not None:
            request.extensions = {**request.extensions, "sni_hostname": url.host}
            request.url = url.copy_with(host=_TUNNEL_HOST, port=local_port)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


async def reachable(address: Address, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connect from here gets an answer: accepted, or refused (the path works)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except ConnectionRefusedError:
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def url_address(url: str) -> Address:
    """The (host, port) a client of ``url`` connects to."""
    parsed = httpx.URL(url.strip())
    if not parsed.host:
        raise InputError(f"{url!r} is not a URL like https://10.0.0.10:6443")
    return parsed.host, parsed.port or 443


class SecretFiles:
    """Credentials as files for the TLS libraries, which read keys from paths only.

    Where the system has anonymous memory files (Linux memfd), each is one of those, named
    ``/proc/self/fd/<n>``: only this process can open it, and it is gone when the process
    ends, however it ends (a SIGKILLed run leaves no key behind). Elsewhere, a 0600 file in
    a 0700 temporary directory, removed on ``close``.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._directory: Path | None = None

    def add(self, name: str, content: bytes) -> str:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create(f"kubeha-{name}", os.MFD_CLOEXEC)
            self._fds.append(fd)
            with open(fd, "wb", closefd=False) as f:
                f.write(content)
            return f"/proc/self/fd/{fd}"
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="kubeha-credentials-"))  # 0700
        path = self._directory / name
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(content)
        return str(path)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


class ClusterAccess:
    """``with ClusterAccess(inventory) as access:`` -- SSH to every host, etcd and the API.

    Hosts SSH cannot reach are in ``connect_errors``; using one raises its error.
    ``etcd_endpoints`` replaces the inventory's etcd client URLs for ``etcd()``.
    """

    def __init__(self, inventory: Inventory, trust_new_host_keys: bool = False, *,
                 prefer_tunnel: bool = False, etcd_endpoints: Sequence[str] | None = None) -> None:
        self.inventory = inventory
        self.cluster = inventory.cluster
        self.prefer_tunnel = prefer_tunnel
        # an operation that changes etcd members names the members before and after it
        self.etcd_endpoints = tuple(etcd_endpoints or inventory.cluster.etcd_client_urls())
        ssh = inventory.ssh
        # user and port None: each host's own, which the inventory defaults to ssh.user/port
        self._settings = SshSettings(key_file=ssh.key_file, trust_new_host_keys=trust_new_host_keys,
                                     sudo=ssh.sudo,
                                     **({"known_hosts": ssh.known_hosts} if ssh.known_hosts else {}))
        self.connect_errors: dict[str, HostError] = {}
        self._fleets: dict[str, Fleet] = {}  # host name -> the fleet holding its connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stack = contextlib.AsyncExitStack()  # fleets and tunnels, closed on the loop
        self._lock = threading.Lock()  # credentials and routes, asked for from any thread
        self._routes: dict[Address, int] = {}  # tunnelled address -> its local port
        self._direct: set[Address] = set()
        self._loopback: dict[tuple[str, int], int] = {}  # (host, port) -> local port of its tunnel
        self._secrets = SecretFiles()
        self._etcd_files: tuple[str, str, str] | None = None
        self._kube_files: tuple[str, str, str] | None = None
        self._clients: list[Callable[[], None]] = []  # close() of every client handed out

    def sibling(self) -> ClusterAccess:
        """Another access (not yet open) to the same cluster with the same settings and its
        own SSH connections and loop: for work that must not wait behind this one's."""
        return ClusterAccess(self.inventory, self._settings.trust_new_host_keys,
                             prefer_tunnel=self.prefer_tunnel, etcd_endpoints=self.etcd_endpoints)

    def use_inventory(self, inventory: Inventory) -> None:
        """Go on with ``inventory``: the same hosts, roles changed by an operation that
        rewrote the inventory midway, so that what follows sees the cluster as it is now."""
        self.inventory = inventory
        self.cluster = inventory.cluster

    # ---- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> ClusterAccess:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Start the SSH loop and connect to every host (in parallel)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubeha-ssh", daemon=True)
        self._thread.start()
        try:
            self._call(self._open_fleets())
        except BaseException:
            self.close()
            raise

    async def _open_fleets(self) -> None:
        # One fleet per SSH key: the hosts layer takes one key per SshSettings.
        by_key: dict[Path | None, list[Host]] = {}
        for host in self.cluster.hosts:
            by_key.setdefault(host.ssh_key or self._settings.key_file, []).append(host)
        fleets = [Fleet(hosts, replace(self._settings, key_file=key)) for key, hosts in by_key.items()]
        for fleet in fleets:
            self._stack.push_async_callback(fleet.close)
            self._fleets.update((h.name, fleet) for h in fleet.hosts)
        await asyncio.gather(*(fleet.open() for fleet in fleets))
        for fleet in fleets:
            self.connect_errors.update(fleet.connect_errors)

    def close(self) -> None:
        """Close every client handed out, the tunnels and connections; remove the credentials."""
        for close_client in reversed(self._clients):
            close_client()
        self._clients.clear()
        if self._loop is not None and self._thread is not None:
            try:
                self._call(self._stack.aclose())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()
                self._loop = self._thread = None
        self._secrets.close()
        self._etcd_files = self._kube_files = None

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or threading.current_thread() is self._thread:
            coroutine.close()  # never to run: no "never awaited" warning
        loop = self._require_open()
        if threading.current_thread() is self._thread:
            raise RuntimeError("ClusterAccess is synchronous: do not call it from its own SSH loop")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return future.result()

    def _require_open(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the ClusterAccess is not open: use it in a with block")
        return self._loop

    # ---- hosts ---------------------------------------------------------------------------

    def connection(self, host: str | Host) -> HostConnection:
        """The host's open connection (for async actions); its connect error if it has none."""
        self._require_open()
        name = host if isinstance(host, str) else host.name
        fleet = self._fleets.get(name)
        if fleet is None:
            raise InputError(f"{name} is not a host of cluster {self.cluster.name}")
        return fleet[name]

    @property
    def connected(self) -> tuple[Host, ...]:
        return tuple(h for h in self.cluster.hosts if h.name not in self.connect_errors)

    def run(self, host: str | Host, command: Command, *, check: bool = False,
            timeout: float | None = None, input: str | bytes | None = None,
            sensitive: bool = False) -> CommandResult:
        return self._call(self.connection(host).run(command, check=check, timeout=timeout,
                                                    input=input, sensitive=sensitive))

    def run_all(self, action: Command | Callable[[HostConnection], Awaitable[T]],
                hosts: Iterable[str | Host] | None = None) -> dict[str, HostOutcome[T]]:
        """A command (checked) or ``await action(conn)`` on each host (default: all), in parallel.

        A host that fails gets its HostError in its outcome; any other error is raised once
        every host has finished.
        """
        names = [h if isinstance(h, str) else h.name for h in (self.cluster.hosts if hosts is None else hosts)]
        act = action if callable(action) else lambda conn: conn.run(action)

        async def one(name: str) -> HostOutcome[T]:
            try:
                return HostOutcome(name, value=await act(self.connection(name)))
            except HostError as e:
                return HostOutcome(name, error=e)

        async def every() -> list[HostOutcome[T] | BaseException]:
            return await asyncio.gather(*(one(n) for n in names), return_exceptions=True)

        results = self._call(every())
        bugs = [r for r in results if isinstance(r, BaseException)]
        if bugs:
            raise bugs[0]
        return {o.host: o for o in results if isinstance(o, HostOutcome)}

    def get_file(self, host: str | Host, path: str | PurePosixPath) -> bytes | None:
        return self._call(self.connection(host).get_file(path))

    def fact(self, host: str | Host, fact: Fact[T]) -> T:
        """``fact`` read on ``host``: its command run, its output parsed."""
        return self._call(gather_fact(self.connection(host), fact))

    def stat(self, host: str | Host, path: str | PurePosixPath) -> FileStat | None:
        return self._call(self.connection(host).stat(path))

    def put_file(self, host: str | Host, path: str | PurePosixPath, content: bytes, *,
                 mode: int | None = None, owner: str | None = None, backup: BackupSet) -> None:
        self._call(self.connection(host).put_file(path, content, mode=mode, owner=owner, backup=backup))

    def put_files(self, host: str | Host, contents: Mapping[str | PurePosixPath, tuple[bytes, int | None]], *,
                  owner: str | None = None, backup: BackupSet) -> None:
        self._call(self.connection(host).put_files(contents, owner=owner, backup=backup))

    def remove_file(self, host: str | Host, path: str | PurePosixPath, *, backup: BackupSet) -> None:
        self._call(self.connection(host).remove_file(path, backup=backup))

    def remove_files(self, host: str | Host, paths: Sequence[str | PurePosixPath], *, backup: BackupSet) -> None:
        self._call(self.connection(host).remove_files(paths, backup=backup))

    def restore(self, host: str | Host, backup: BackupSet,
                paths: Sequence[str | PurePosixPath] | None = None) -> tuple[BackupEntry, ...]:
        return self._call(self.connection(host).restore(backup, paths))

    # ---- routes --------------------------------------------------------------------------

    def routes(self, addresses: Iterable[Address]) -> dict[Address, int | None]:
        """For each address: None to use it directly, else the local port of its tunnel."""
        wanted = list(dict.fromkeys(addresses))
        with self._lock:
            unknown = [a for a in wanted if a not in self._routes and a not in self._direct]
            if unknown:
                self._call(self._route(unknown))
            return {a: self._routes.get(a) for a in wanted}

    async def _route(self, addresses: list[Address]) -> None:
        direct = ([False] * len(addresses) if self.prefer_tunnel
                  else await asyncio.gather(*(reachable(a) for a in addresses)))
        for address, is_direct in zip(addresses, direct):
            if is_direct:
                self._direct.add(address)
            else:
                conn = self._tunnel_connection(address[0])
                self._routes[address] = await self._stack.enter_async_context(conn.forward_local(*address))

    def loopback_port(self, host: str | Host, port: int) -> int:
        """A local port whose connections reach ``host``'s own 127.0.0.1:``port`` through its
        SSH connection: a node-local service as the host's own clients reach it. Open until
        close; asked again, the same tunnel."""
        conn = self.connection(host)
        with self._lock:
            if (conn.name, port) in self._loopback:
                return self._loopback[conn.name, port]
        local_port = self._call(self._stack.enter_async_context(conn.forward_local(_TUNNEL_HOST, port)))
        with self._lock:
            self._direct.add((_TUNNEL_HOST, local_port))  # already a tunnel: never tunnel it again
            self._loopback[conn.name, port] = local_port
        return local_port

    def _tunnel_connection(self, address: str) -> HostConnection:
        """The host at ``address`` itself if connected, else a master, else any host."""
        hosts = self.connected
        ranked = ([h for h in hosts if str(h.address) == address]
                  + [h for h in hosts if h in self.cluster.masters] + list(hosts))
        if not ranked:
            raise AccessError(f"cannot tunnel to {address}: no host of cluster {self.cluster.name} "
                              f"is reachable over SSH ({self._connect_summary()})")
        return self.connection(ranked[0])

    def _connect_summary(self) -> str:
        return "; ".join(str(e) for e in self.connect_errors.values()) or "no hosts"

    def _routed(self, inner: httpx.BaseTransport, urls: Iterable[str]) -> TunnelRoutes:
        self.routes(url_address(u) for u in urls)
        return TunnelRoutes(inner, self._routes)

    # ---- credentials ---------------------------------------------------------------------

    def _from_a_master(self, what: str,
                       fetch: Callable[[HostConnection], Awaitable[dict[str, bytes] | None]]
                       ) -> tuple[str, ...]:
        """Files from the first master (else etcd member, else host) that has them all, saved
        as secret files; their local paths in ``fetch``'s order."""
        candidates = [h for h in dict.fromkeys(self.cluster.masters + self.cluster.etcd_members
                                               + self.cluster.hosts) if h in self.connected]
        for host in candidates:
            files = self._call(fetch(self.connection(host)))
            if files is not None:
                return tuple(self._secrets.add(name, content) for name, content in files.items())
        tried = ", ".join(h.name for h in candidates) or "none reachable over SSH"
        raise AccessError(f"no host of cluster {self.cluster.name} has the {what} (tried: {tried}"
                          + (f"; unreachable: {', '.join(self.connect_errors)}" if self.connect_errors else "")
                          + "); check the inventory's layout and paths")

    async def _read_all(self, conn: HostConnection,
                        files: Mapping[str, PurePosixPath | Credential]) -> dict[str, bytes] | None:
        """Each named file's content (a path on the host, or a credential); None if one is missing."""

        async def content(source: PurePosixPath | Credential) -> bytes | None:
            if isinstance(source, Credential):
                return source.pem if source.pem is not None else await conn.get_file(source.path or "")
            return await conn.get_file(source)

        contents = await asyncio.gather(*(content(source) for source in files.values()))
        return None if None in contents else dict(zip(files, contents))  # type: ignore[arg-type]

    def etcd_tls_files(self) -> tuple[str, str, str]:
        """Local paths of the etcd CA, client cert and client key."""
        with self._lock:
            if self._etcd_files is None:
                p = self.cluster.paths
                files = {"etcd-ca.crt": p.etcd_ca.cert, "etcd-client.crt": p.etcd_client.cert,
                         "etcd-client.key": p.etcd_client.key}
                self._etcd_files = self._from_a_master(
                    f"etcd client certificate ({p.etcd_client.cert})",
                    lambda conn: self._read_all(conn, files))  # type: ignore[assignment]
            return self._etcd_files

    def kube_tls_files(self) -> tuple[str, str, str]:
        """Local paths of the cluster CA, admin client cert and key (from the admin kubeconfig)."""
        with self._lock:
            if self._kube_files is None:
                path = self.cluster.paths.admin_kubeconfig
                self._kube_files = self._from_a_master(
                    f"admin kubeconfig ({path})", lambda conn: self._admin_files(conn, path))  # type: ignore[assignment]
            return self._kube_files

    async def _admin_files(self, conn: HostConnection, path: PurePosixPath) -> dict[str, bytes] | None:
        text = await conn.get_file(path)
        if text is None:
            return None
        creds = kubeconfig_credentials(text.decode("utf-8", "replace"), f"{conn.name}:{path}")
        return await self._read_all(conn, {"ca.crt": creds.ca, "admin.crt": creds.client_cert,
                                           "admin.key": creds.client_key})

    def _handed_out(self, client: T, close: Callable[[], None]) -> T:
        self._clients.append(close)
        return client

    # ---- clients -------------------------------------------------------------------------

    def etcd(self) -> EtcdClient:
        """A client of every etcd member (failing over between them)."""
        return self.etcd_at(self.etcd_endpoints)

    def etcd_member(self, host: str | Host) -> EtcdClient:
        """A client of one member only (no failover): for status and health of that member."""
        host = self.cluster.host(host) if isinstance(host, str) else host
        return self.etcd_at((f"https://{host.address}:{ETCD_CLIENT_PORT}",))

    def etcd_at(self, endpoints: Sequence[str]) -> EtcdClient:
        """A client of these client URLs (failing over between them in order)."""
        if not endpoints:
            raise InputError(f"cluster {self.cluster.name} has no etcd members in the inventory")
        ca, cert, key = self.etcd_tls_files()
        client = EtcdClient(endpoints, ca, cert, key,
                            wrap_transport=lambda transport: self._routed(transport, endpoints))
        return self._handed_out(client, client.close)

    def kube(self) -> ApiClient:
        """An admin ApiClient through the cluster's endpoint (the VIP)."""
        return self.kube_at(self.cluster.endpoint)

    def kube_at(self, url: str) -> ApiClient:
        """An admin ApiClient for one server URL (an apiserver, a load balancer)."""
        ca, cert, key = self.kube_tls_files()
        address = url_address(url)
        local_port = self.routes([address])[address]
        if local_port is None:
            client = api_client(url, ca, cert, key)
        else:
            client = api_client(f"https://{_TUNNEL_HOST}:{local_port}", ca, cert, key,
                                tls_server_name=address[0])
        return self._handed_out(client, client.close)

    def http(self, url: str, *, timeout: float = 5.0) -> httpx.Client:
        """An httpx client for ``url`` (its base URL) with the cluster CA and the admin cert."""
        ca, cert, key = self.kube_tls_files()
        try:
            tls = ssl.create_default_context(cafile=ca)
            tls.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise AccessError(f"the admin credentials of cluster {self.cluster.name} are not a "
                              f"usable CA, certificate and key: {type(e).__name__}") from None
        client = httpx.Client(base_url=url, timeout=timeout,
                              transport=self._routed(httpx.HTTPTransport(verify=tls), [url]))
        return self._handed_out(client, client.close)
