"""kube-controller-manager stand-in: leader election and the node lifecycle controller's marking.

While leading, every ``--node-monitor-period`` it looks at each Node's Lease in
``kube-node-lease``. A Lease whose renewTime has not changed for
``--node-monitor-grace-period`` (measured on this process's clock from when it saw the
change, as the real controller does; a missing Lease counts from when the node was first
seen) makes the node unreachable: Ready becomes Unknown (NodeStatusUnknown, "Kubelet
stopped posting node status."), the taint ``node.kubernetes.io/unreachable:NoExecute`` is
added and a NodeNotReady Event recorded. Once the Lease is fresh again and the kubelet has
posted Ready=True, the taint goes.

Pods are never deleted or evicted: the real taint-based eviction waits 300 s (the pods'
default toleration), which no lab scenario reaches.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from kubeha.lab.standins.common import (
    kube_time, parse_duration, secure_serving_flags, serve_healthz, start_standin,
)
from kubeha.lab.standins.kubeclient import ApiError, KubeClient, Object, condition, connect
from kubeha.lab.standins.leaderelection import LEADER_ELECTION_FLAGS, LeaderElector

COMPONENT = "kube-controller-manager"
UNREACHABLE_TAINT = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
FLAGS = {
    "kubeconfig": "",
    "node-monitor-grace-period": "40s",
    "node-monitor-period": "5s",
    **LEADER_ELECTION_FLAGS,
    **secure_serving_flags(10257),
}


def _is_unreachable_taint(taint: dict[str, Any]) -> bool:
    return all(taint.get(k) == v for k, v in UNREACHABLE_TAINT.items())


class NodeMonitor:
    def __init__(self, client: KubeClient, grace_period: float, log: logging.Logger) -> None:
        self.client, self.grace_period, self.log = client, grace_period, log
        # node name -> (the Lease renewTime last seen, monotonic time it was first seen)
        self._probes: dict[str, tuple[str | None, float]] = {}

    def _stale(self, name: str, renew_time: str | None, now: float) -> bool:
        probe = self._probes.get(name)
        if probe is None or probe[0] != renew_time:
            probe = self._probes[name] = (renew_time, now)
        return now - probe[1] > self.grace_period

    def monitor(self) -> None:
        leases = {lease["metadata"]["name"]: (lease.get("spec") or {}).get("renewTime")
                  for lease in self.client.list("leases", "kube-node-lease")}
        now = time.monotonic()
        for node in self.client.list("nodes"):
            name = node["metadata"]["name"]
            try:
                self._check(node, self._stale(name, leases.get(name), now))
            except ApiError as e:  # say a 409 racing the kubelet: next period looks again
                self.log.warning("error updating node %s: %s", name, e)

    def _check(self, node: Object, stale: bool) -> None:
        ready = condition(node, "Ready")
        taints = (node.get("spec") or {}).get("taints") or []
        tainted = any(_is_unreachable_taint(t) for t in taints)
        if stale and (ready is None or ready.get("status") != "Unknown"):
            node = self._mark_unknown(node, ready)
        if stale and not tainted:
            node.setdefault("spec", {})["taints"] = [*taints, {**UNREACHABLE_TAINT, "timeAdded": kube_time()}]
            self.client.update("nodes", node)
            self.log.info("added taint %s to node %s", UNREACHABLE_TAINT["key"], node["metadata"]["name"])
        elif not stale and tainted and ready is not None and ready.get("status") == "True":
            node["spec"]["taints"] = [t for t in taints if not _is_unreachable_taint(t)]
            self.client.update("nodes", node)
            self.log.info("removed taint %s from node %s", UNREACHABLE_TAINT["key"], node["metadata"]["name"])

    def _mark_unknown(self, node: Object, ready: Object | None) -> Object:
        name = node["metadata"]["name"]
        now = kube_time()
        unknown = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                   "message": "Kubelet stopped posting node status.",
                   "lastHeartbeatTime": (ready or {}).get("lastHeartbeatTime", now), "lastTransitionTime": now}
        status = node.setdefault("status", {})
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"] + [unknown]
        node = self.client.update("nodes", node, subresource="status")
        self.log.info("node %s: lease not renewed for %.0f s, Ready is now Unknown", name, self.grace_period)
        self.client.create("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name,
                               "uid": node["metadata"].get("uid", "")},
            "reason": "NodeNotReady", "message": f"Node {name} status is now: NodeNotReady",
            "type": "Normal", "source": {"component": "node-controller"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }, "default")
        return node


def main(argv: list[str] | None = None) -> int:
    flags, log, stopping = start_standin(COMPONENT, argv, FLAGS)
    client = connect(str(flags["kubeconfig"]), log)
    if client is None:
        return 1
    serve_healthz(flags, COMPONENT, log)
    monitor = NodeMonitor(client, parse_duration(str(flags["node-monitor-grace-period"])), log)
    period = parse_duration(str(flags["node-monitor-period"]))
    elector = LeaderElector.from_flags(flags, client, COMPONENT, log)
    if elector is not None:
        threading.Thread(target=elector.run, args=(stopping,), name="leader-election", daemon=True).start()
    while not stopping.wait(period):
        if elector is None or elector.leading:
            try:
                monitor.monitor()
            except ApiError as e:
                log.warning("error monitoring nodes: %s", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
