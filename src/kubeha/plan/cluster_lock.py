"""The cluster-side lock: one kubeha run at a time per cluster, whichever machine runs it.

The journal's flock only stops a second run on the same machine; this lock lives in the
cluster's etcd, as the key ``/kubeha/lock`` attached to a lease (see
:mod:`kubeha.etcd.lease`). The key holds JSON ``{operation_id, holder, started, ttl}``.

- Taking it is one transaction (create the key only if absent), so of two runs started at
  once exactly one gets it; the other gets :class:`ClusterLocked` naming the holder.
- A run that ends (however it ends, short of a crash) revokes the lease: the key is gone.
- A crashed or killed run leaves the key until its lease expires, at most ``ttl`` seconds
  later. Resuming that operation, from any machine, works from then on; while its holder
  is alive even the same operation id is refused. A holder on this very machine whose
  process is gone is known dead at once: its key is deleted (only if unchanged) and taken.
- While held, a background thread renews the lease. When renewal fails for long enough the
  lock counts as lost (another run may take it soon).

Use with the engine: ``apply(..., cluster_lock=cluster_lock_for(access))``. The engine
enters the lock around the whole run; to stop safely after a loss, it should keep the
object it entered (``with self.cluster_lock(plan) as lock``) and call ``lock.check()``
between steps, before starting the next one: it raises :class:`ClusterLockLost` once the
lock is lost (``lock.lost`` says why, or is None).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from kubeha.etcd.gateway import EtcdClient, KeyValue
from kubeha.etcd.lease import KeptLease
from kubeha.plan.errors import ClusterLocked, ClusterLockLost, resume_command, rollback_command
from kubeha.plan.model import Plan

if TYPE_CHECKING:
    from kubeha.access import ClusterAccess

LOCK_KEY = "/kubeha/lock"
DEFAULT_TTL = 30


def this_holder() -> str:
    """Who runs this process: ``user@machine pid N``."""
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"


def _held(current: KeyValue | None) -> dict:
    try:
        held = json.loads(current.value) if current else {}
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def _holder_dead_here(held: dict) -> bool:
    """Whether the holder ran on this machine and its process is gone (a kill, a crash)."""
    if held.get("machine") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _refusal(current: KeyValue | None, ttl: int) -> ClusterLocked:
    """The one-line refusal for the lock key found in the way."""
    held = _held(current)
    return ClusterLocked(
        f"cluster is locked by operation {held.get('operation_id', '(unknown)')} "
        f"({held.get('holder', 'unknown holder')}, since {held.get('started', 'an unknown time')}): "
        f"wait for it, or if that run is dead the lock expires within {held.get('ttl', ttl)} s")


class ClusterLock:
    """``with ClusterLock(client, operation_id, holder):`` holds ``/kubeha/lock`` in etcd.

    Raises :class:`ClusterLocked` on entry when another run holds it. See the module
    docstring for :attr:`lost` and :meth:`check`.
    """

    def __init__(self, etcd_client: EtcdClient, operation_id: str, holder: str, ttl: int = DEFAULT_TTL) -> None:
        self.client = etcd_client
        self.operation_id = operation_id
        self.holder = holder
        self.ttl = ttl
        self._lease: KeptLease | None = None

    def __enter__(self) -> ClusterLock:
        lease = KeptLease(self.client, self.ttl)
        value = json.dumps({"operation_id": self.operation_id, "holder": self.holder,
                            "machine": socket.gethostname(), "pid": os.getpid(),
                            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "ttl": self.ttl}).encode()
        try:
            taken, current = self.client.put_if_absent(LOCK_KEY, value, lease.lease_id)
            if not taken and current is not None and _holder_dead_here(_held(current)):
                self.client.delete(LOCK_KEY, mod_revision=current.mod_revision)
                taken, current = self.client.put_if_absent(LOCK_KEY, value, lease.lease_id)
        except BaseException:
            lease.revoke()
            raise
        if not taken:
            lease.revoke()
            raise _refusal(current, self.ttl)
        self._lease = lease
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._lease is not None:
            self._lease.revoke()
            self._lease = None

    @property
    def lost(self) -> str | None:
        """Why the lock may no longer be ours (one line), or None while it is held."""
        return self._lease.lost if self._lease is not None else None

    def check(self) -> None:
        """Raise :class:`ClusterLockLost` if the lock was lost; call it before each step."""
        if self.lost is not None:
            raise ClusterLockLost(f"lost the cluster lock of operation {self.operation_id} ({self.lost}): "
                                  f"stopped before the next step; when etcd answers again continue with "
                                  f"{resume_command(self.operation_id)} (or {rollback_command(self.operation_id)} "
                                  f"if it was rolling back)")


def cluster_lock_for(access: ClusterAccess, ttl: int = DEFAULT_TTL) -> Callable[[Plan], ClusterLock]:
    """The engine's ``cluster_lock`` hook for a cluster reached through ``access``."""
    return lambda plan: ClusterLock(access.etcd(), plan.operation_id, this_holder(), ttl)
