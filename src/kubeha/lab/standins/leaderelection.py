"""Lease-based leader election, as client-go's ``leaderelection`` package does it.

A candidate polls the Lease ``<namespace>/<name>`` every retry period (with jitter). It takes
the Lease when it is missing, when it holds it itself, or when the holder's record has not
changed for ``leaseDurationSeconds`` as observed on the candidate's own clock (client-go
compares observation times, never remote timestamps, so clock skew does not matter). Every
write carries the Lease's resourceVersion: of two candidates racing, one gets 409.
The leader renews every retry period; if it cannot renew within the renew deadline it
has lost leadership. Real components then exit and get restarted by the kubelet or
systemd; the stand-ins go back to being candidates, which ends in the same state.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubeha.lab.standins.common import FlagValue, micro_time, parse_bool, parse_duration
from kubeha.lab.standins.kubeclient import ApiError, KubeClient, Object

# The real --leader-elect-* flags of kube-controller-manager and kube-scheduler.
LEADER_ELECTION_FLAGS: Mapping[str, FlagValue] = {
    "leader-elect": True,
    "leader-elect-lease-duration": "15s",
    "leader-elect-renew-deadline": "10s",
    "leader-elect-retry-period": "2s",
    "leader-elect-resource-lock": "leases",
    "leader-elect-resource-name": "",
    "leader-elect-resource-namespace": "kube-system",
}

_JITTER = 1.2  # client-go's JitterFactor for the acquire loop


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, *, lease_duration: float,
                 renew_deadline: float, retry_period: float, log: logging.Logger) -> None:
        self.client = client
        self.namespace, self.name = namespace, name
        self.identity = f"{socket.gethostname()}_{uuid.uuid4()}"
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.log = log
        self.leading = False
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0

    @classmethod
    def from_flags(cls, flags: Mapping[str, FlagValue], client: KubeClient, component: str,
                   log: logging.Logger) -> LeaderElector | None:
        """The elector the --leader-elect-* flags ask for; None with --leader-elect=false."""
        if not parse_bool(flags["leader-elect"]):
            return None
        return cls(client, str(flags["leader-elect-resource-namespace"]),
                   str(flags["leader-elect-resource-name"]) or component,
                   lease_duration=parse_duration(str(flags["leader-elect-lease-duration"])),
                   renew_deadline=parse_duration(str(flags["leader-elect-renew-deadline"])),
                   retry_period=parse_duration(str(flags["leader-elect-retry-period"])), log=log)

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    def run(self, stopping: threading.Event) -> None:
        """Campaign, lead, and campaign again after losing the lease, until ``stopping`` is set."""
        self.log.info("attempting to acquire leader lease %s as %s", self.lease, self.identity)
        while not stopping.is_set():
            while not self._try_acquire_or_renew():
                if stopping.wait(self.retry_period * (1 + random.random() * _JITTER)):
                    return
            self.leading = True
            self.log.info("successfully acquired lease %s: became leader", self.lease)
            while not stopping.wait(self.retry_period):
                if not self._renew_within_deadline(stopping):
                    break
            if stopping.is_set():
                return
            self.leading = False
            self.log.warning("failed to renew lease %s within %.1f s: lost leadership",
                             self.lease, self.renew_deadline)

    def _renew_within_deadline(self, stopping: threading.Event) -> bool:
        deadline = time.monotonic() + self.renew_deadline
        while not self._try_acquire_or_renew():
            if time.monotonic() >= deadline or stopping.wait(self.retry_period):
                return stopping.is_set()
        return True

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": acquire_time, "renewTime": micro_time(),
                "leaseTransitions": transitions}

    def _observe(self, spec: dict[str, Any]) -> None:
        if spec != self._observed_spec:
            self._observed_spec, self._observed_at = spec, time.monotonic()

    def _try_acquire_or_renew(self) -> bool:
        try:
            lease = self.client.get("leases", self.name, self.namespace)
        except ApiError as e:
            if e.status != 404:
                self._log_failure("error retrieving lease %s: %s", self.lease, e)
                return False
            new = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": self.name, "namespace": self.namespace},
                   "spec": self._spec(micro_time(), 0)}
            return self._write("create", lambda: self.client.create("leases", new, self.namespace))
        current = lease.get("spec") or {}
        self._observe(current)
        holder = current.get("holderIdentity")
        duration = current.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False
        if holder == self.identity:
            lease["spec"] = self._spec(current.get("acquireTime") or micro_time(),
                                       current.get("leaseTransitions") or 0)
        else:
            lease["spec"] = self._spec(micro_time(), (current.get("leaseTransitions") or 0) + 1)
        return self._write("update", lambda: self.client.update("leases", lease))

    def _write(self, verb: str, request: Callable[[], Object]) -> bool:
        try:
            written = request()
        except ApiError as e:
            self._log_failure("failed to %s lease %s: %s", verb, self.lease, e)
            return False
        self._observe(written.get("spec") or {})
        return True

    def _log_failure(self, message: str, *args: object) -> None:
        # a leader's failures matter; a candidate's are routine (someone else holds the lease)
        self.log.log(logging.WARNING if self.leading else logging.DEBUG, message, *args)
