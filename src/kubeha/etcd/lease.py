"""An etcd lease kept alive by a background thread for as long as its owner runs.

Keys attached to the lease live while it is renewed and vanish when it is revoked, or
``ttl`` seconds after its owner died (a crash, SIGKILL, a lost network): a lock that cannot
outlive a dead holder by more than ``ttl``.

Renewal happens every ``ttl / 3``. A renewal that fails is tried again quickly; once no
renewal succeeded for ``2/3 ttl`` (or etcd says the lease is gone), the lease counts as
lost: it may expire any moment, so whoever relies on it must stop. The loss is recorded,
never raised in the thread; the owner looks at :attr:`KeptLease.lost`.
"""

from __future__ import annotations

import threading
import time

from kubeha.etcd.errors import EtcdError
from kubeha.etcd.gateway import EtcdClient

_RETRY_FRACTION = 10  # after a failed renewal, try again after ttl / 10


class KeptLease:
    """A granted lease renewed in the background until :meth:`revoke`."""

    def __init__(self, client: EtcdClient, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self.lease_id = client.lease_grant(ttl)
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"etcd-lease-{self.lease_id:x}",
                                        daemon=True)
        self._thread.start()

    @property
    def lost(self) -> str | None:
        """Why the lease may have expired (one line), or None while it is kept."""
        return self._lost

    def _renew_until_stopped(self) -> None:
        wait = self.ttl / 3
        while not self._stop.wait(wait):
            try:
                # A renewal slower than the rest of the lease would be too late anyway.
                remaining = self.ttl - (time.monotonic() - self._renewed_at)
                granted = self.client.lease_keepalive(self.lease_id, timeout=max(remaining, 0.1))
            except EtcdError as e:
                silent_for = time.monotonic() - self._renewed_at
                if silent_for >= self.ttl * 2 / 3:
                    self._lost = f"etcd lease not renewed for {silent_for:.0f} s: {e}"
                    return
                wait = self.ttl / _RETRY_FRACTION
                continue
            if granted <= 0:
                self._lost = "etcd lease expired before it was renewed"
                return
            self._renewed_at = time.monotonic()
            wait = self.ttl / 3

    def revoke(self) -> None:
        """Stop renewing and end the lease now, deleting its keys.

        When etcd cannot be told (it is unreachable, the lease already expired), the lease
        ends by itself within ``ttl``; that is no reason to fail the owner's work, so it is
        not raised.
        """
        self._stop.set()
        self._thread.join()
        try:
            self.client.lease_revoke(self.lease_id)
        except EtcdError:
            pass
