"""The availability probe: real requests through every way clients reach the API, and
numbered etcd writes, while an operation runs.

Each path has its own thread, so a slow or dead path never delays another's timeline. By
default every request opens a new TCP and TLS connection (``Connection: close``): that is
what a restarting client or a kubelet reconnecting sees, and it is the request a load
balancer change can break. Keep-alive (``keep_alive=True``) reuses one connection, which
hides a change until that connection drops; it measures what long-lived clients see.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from kubeha.access import ClusterAccess
from kubeha.errors import KubehaError
from kubeha.etcd.gateway import EtcdClient
from kubeha.model import Cluster, VirtualIP
from kubeha.probe.summary import EtcdWritesSummary, ProbeRecord, ProbeSummary, lost_writes, summarize

READ_PATH = "/api/v1/namespaces/default"  # a real read: authn, authz and etcd behind it
ETCD_PATH = "etcd-writes"
_ERROR_CHARS = 200


@dataclass(frozen=True)
class ProbePath:
    """One way to the API (or to etcd) and the request that exercises it."""

    name: str
    target: str  # what it reaches, for people
    request: Callable[[], int | None]  # the 2xx status (None: not HTTP); RefusedAnswer, or raises when no answer


class RefusedAnswer(Exception):
    """An HTTP answer other than 2xx: its status and what the server said (a Status's
    message), so a timeline shows why a request failed, not only that it did."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _said(response: httpx.Response) -> str:
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return " ".join(str(message or response.text).split())[:_ERROR_CHARS] or f"HTTP {response.status_code}"


def _http_path(name: str, target: str, client: httpx.Client, keep_alive: bool,
               server_name: str | None = None) -> ProbePath:
    """``server_name``: the name the server's certificate is checked against, if not the URL's."""
    headers = {} if keep_alive else {"Connection": "close"}
    extensions = {"sni_hostname": server_name} if server_name else {}

    def read() -> int:
        response = client.get(READ_PATH, headers=headers, extensions=extensions)
        if not 200 <= response.status_code < 300:
            raise RefusedAnswer(response.status_code, _said(response))
        return response.status_code

    return ProbePath(name, target, read)


class EtcdWriter:
    """Puts ``<prefix><n>`` for n = 0, 1, ... and remembers which puts were acknowledged."""

    def __init__(self, etcd: EtcdClient, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.writes = 0
        self.acknowledged: list[int] = []

    def put_next(self) -> None:  # a ProbePath request: no HTTP status
        number = self.writes
        self.writes += 1
        self.etcd.put(f"{self.prefix}{number}", str(time.time()).encode())
        self.acknowledged.append(number)

    def verify_and_clean(self) -> EtcdWritesSummary:
        """Read every key back, report the acknowledged ones missing, delete them all."""
        try:
            kvs, _ = self.etcd.range_prefix(self.prefix)
        except KubehaError:
            return EtcdWritesSummary(self.writes, len(self.acknowledged), lost=None)
        keys = [kv.key for kv in kvs]
        # one put per request; a few threads so cleaning a long run stays short
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self.etcd.delete, keys))
        read_back = (int(k.removeprefix(self.prefix)) for k in keys)
        return EtcdWritesSummary(self.writes, len(self.acknowledged),
                                 lost=lost_writes(self.acknowledged, read_back))


def _vip(cluster: Cluster) -> VirtualIP:
    assert cluster.vip is not None  # a probe of LB paths started with one; no operation takes it away
    return cluster.vip


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class Probe:
    """``with Probe(access) as probe: ...`` then ``probe.summary``; or ``start()``/``stop()``.

    Paths: the cluster endpoint (the VIP), each LB host's port directly, and with
    ``node_proxies`` each worker's node-local proxy through an SSH forward to its
    127.0.0.1 (the way its kubelet goes). ``etcd_writes`` adds numbered puts through every
    etcd member, read back at the end. ``timeline``: a file that gets each record as a JSON
    line as it happens; ``run_id`` names the run (and its etcd keys).

    The probe reads the cluster from ``access`` at each request (an operation rewrites
    it as the endpoint moves) but reaches it through its own connections (a sibling of
    ``access``): its tunnels never wait behind the operation's SSH work on every host.
    """

    def __init__(self, access: ClusterAccess, interval: float = 0.05, node_proxies: bool = False,
                 etcd_writes: bool = False, *, keep_alive: bool = False, timeout: float = 1.0,
                 timeline: Path | None = None, run_id: str | None = None,
                 skip_lb_hosts: Collection[str] = ()) -> None:
        self.access = access
        self.skip_lb_hosts = frozenset(skip_lb_hosts)  # LB hosts the run retires
        self.interval = interval
        self.node_proxies = node_proxies
        self.etcd_writes = etcd_writes
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.timeline = timeline
        self.run_id = run_id or new_run_id()
        self.paths: tuple[ProbePath, ...] = ()
        self.summary: ProbeSummary | None = None
        self._records: list[ProbeRecord] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._own: ClusterAccess | None = None  # the probe's connections, open while it runs
        self._writer: EtcdWriter | None = None
        self._timeline_file: IO[str] | None = None
        self._started = 0.0

    def __enter__(self) -> Probe:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def records(self) -> list[ProbeRecord]:
        with self._lock:
            return list(self._records)

    def _client(self, url: str) -> httpx.Client:
        assert self._own is not None
        return self._own.http(url, timeout=self.timeout)  # closed with self._own

    def _following(self, name: str, target: str, url_of: Callable[[Cluster], tuple[str, str | None]]) -> ProbePath:
        """An HTTP path to ``url_of(cluster)`` (a URL and the name its certificate is checked
        against) as the inventory has it at each request: an operation that moves the
        endpoint (`change-endpoint`) rewrites the inventory once the new one serves."""
        def made(where: tuple[str, str | None]) -> ProbePath:
            return _http_path(name, where[0], self._client(where[0]), self.keep_alive, where[1])

        # the first client made here, before the threads start: opening one may need a tunnel
        first = url_of(self.access.cluster)
        paths = {first: made(first)}

        def read() -> int | None:
            where = url_of(self.access.cluster)
            if where not in paths:
                paths[where] = made(where)
            return paths[where].request()

        return ProbePath(name, target, read)

    def _build_paths(self, own: ClusterAccess) -> tuple[ProbePath, ...]:
        cluster = self.access.cluster
        paths = [self._following("vip" if cluster.vip else "endpoint", cluster.endpoint, lambda c: (c.endpoint, None))]
        if cluster.vip is not None:
            for host in (h for h in cluster.lb_hosts if h.name not in self.skip_lb_hosts):
                # the LB hands the connection to any apiserver, whose certificate names the
                # VIP (what clients of an LB connect to), not necessarily this LB host
                paths.append(self._following(
                    f"lb/{host.name}", f"https://{host.address}:{cluster.vip.port}",
                    lambda c, address=host.address: (f"https://{address}:{_vip(c).port}", str(_vip(c).address))))
        if self.node_proxies and cluster.node_local_proxy:
            for host in cluster.workers:
                port = own.loopback_port(host, cluster.node_local_port)
                paths.append(_http_path(f"node-proxy/{host.name}", f"{host.name} {cluster.node_local_endpoint}",
                                        self._client(f"https://127.0.0.1:{port}"), self.keep_alive))
        if self.etcd_writes:
            writer = self._writer = EtcdWriter(own.etcd(), f"/kubeha/probe/{self.run_id}/")
            paths.append(ProbePath(ETCD_PATH, f"etcd put {writer.prefix}<n>", writer.put_next))
        return tuple(paths)

    def start(self) -> None:
        own = self._own = self.access.sibling()
        own.open()
        try:
            self.paths = self._build_paths(own)
        except BaseException:
            own.close()
            raise
        if self.timeline is not None:
            self.timeline.parent.mkdir(parents=True, exist_ok=True)
            # 0600, also over an earlier file: the timeline names the cluster's endpoints and errors
            self._timeline_file = os.fdopen(os.open(self.timeline, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
            os.fchmod(self._timeline_file.fileno(), 0o600)
        self._started = time.time()
        self._threads = [threading.Thread(target=self._run_path, args=(p,), name=f"probe {p.name}", daemon=True)
                         for p in self.paths]
        for thread in self._threads:
            thread.start()

    def stop(self) -> ProbeSummary:
        """Stop every path, check the etcd writes, close the clients; the run's summary."""
        if self.summary is not None:
            return self.summary
        ended = time.time()
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        try:
            etcd = self._writer.verify_and_clean() if self._writer is not None else None
        finally:
            if self._own is not None:
                self._own.close()  # every client it handed out too
            if self._timeline_file is not None:
                self._timeline_file.close()
        self.summary = summarize(self.records, self._started, ended, etcd=etcd)
        return self.summary

    def _run_path(self, path: ProbePath) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            if not self._attempt(path, retry=False).ok and not self._stopping.is_set():
                self._attempt(path, retry=True)
            # on time: one request per interval; late: the next one now, never a burst
            next_at = max(next_at + self.interval, time.monotonic())
            self._stopping.wait(next_at - time.monotonic())

    def _attempt(self, path: ProbePath, retry: bool) -> ProbeRecord:
        ts = time.time()
        started = time.perf_counter()
        status, error = None, None
        try:
            status = path.request()
        except RefusedAnswer as e:
            status, error = e.status, str(e)
        except Exception as e:  # every failure is a data point, not a crash of the probe
            error = f"{type(e).__name__}: {e}"[:_ERROR_CHARS]
        ok = error is None and (status is None or 200 <= status < 300)
        record = ProbeRecord(ts=ts, path=path.name, ok=ok, status=status, error=error, retry=retry,
                             latency_ms=round((time.perf_counter() - started) * 1000, 2))
        with self._lock:
            self._records.append(record)
            if self._timeline_file is not None:
                self._timeline_file.write(json.dumps(record.as_json()) + "\n")
        return record
