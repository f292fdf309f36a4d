"""`repoint-nodes` on the shared lab, with the availability probe running.

The workers' kubelet and kube-proxy kubeconfigs go from their node-local proxy
(https://127.0.0.1:6443) to the VIP endpoint and back, with no failed request through the
VIP and no Node NotReady. On the way there one worker cannot reach the VIP: it is put back
on its own, the run stops naming it, and the others stay repointed. One test per layout,
to keep the lab time small.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers.operations import kubeha_check, make_plan, run_plan, workloads
from kubernetes import client as k8s

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.operations.nodes import read_nodes_files
from kubeha.plan import Journal, StepFailed, StepOutcome
from kubeha.probe import Probe, ProbeSummary

pytestmark = pytest.mark.lab

WORKERS = "worker1,worker2,worker3"


@pytest.fixture
def access(inventory_path):
    """One access for the test's own reads (the operation opens its own, as `kubeha` does)."""
    with ClusterAccess(load_inventory(inventory_path)) as opened:
        yield opened


def servers(access: ClusterAccess, names: list[str]) -> dict[str, tuple]:
    """Each host's (kubelet kubeconfig servers, kube-proxy kubeconfig servers)."""
    found, errors = read_nodes_files(access, [access.cluster.host(n) for n in names])
    assert errors == {}
    return {name: (found[name].kubelet, found[name].kube_proxy) for name in names}


class Watch:
    """While an operation runs: the probe (VIP, LBs, node-local proxies, etcd writes), and every
    Node's Ready condition sampled through the API."""

    def __init__(self, inventory_path) -> None:
        self.access = ClusterAccess(load_inventory(inventory_path))
        self.not_ready: list[str] = []
        self.samples = 0
        self.probe: ProbeSummary | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        api = self.access.kube()
        while not self._stop.wait(0.5):
            try:
                response = k8s.CoreV1Api(api).list_node(_preload_content=False, _request_timeout=5)
            except Exception:  # the probe judges the API's availability; this judges the Nodes
                continue
            self.samples += 1
            for node in json.loads(response.data)["items"]:
                ready = next((c for c in node["status"].get("conditions", []) if c["type"] == "Ready"), {})
                if ready.get("status") != "True":
                    self.not_ready.append(f"{node['metadata']['name']} {ready.get('status')}")

    def __enter__(self) -> Watch:
        self.access.open()
        self._prober = Probe(self.access, node_proxies=True, etcd_writes=True)
        self._prober.start()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.probe = self._prober.stop()
        self.access.close()

    def assert_served_and_ready(self) -> None:
        """No failed request through the VIP, no Node seen NotReady."""
        assert self.probe is not None
        for path in self.probe.paths:
            print(path)
        vip = next(p for p in self.probe.paths if p.path == "vip")
        assert vip.requests > 0 and vip.failures == 0, vip
        assert all(p.failures_after_retry == 0 for p in self.probe.paths), self.probe.paths
        assert self.probe.etcd is not None and self.probe.etcd.lost == (), self.probe.etcd
        assert self.samples > 0 and self.not_ready == [], self.not_ready


def test_workers_move_to_the_vip_and_back_and_a_node_that_cannot_is_put_back_alone(lab, inventory_path, tmp_path,
                                                                                    access):
    cluster = access.cluster
    workers = [h.name for h in cluster.workers]
    pods = workloads(inventory_path)["pods"]
    local, vip = cluster.node_local_endpoint, cluster.endpoint
    on_local = {w: ((local,), (local,)) for w in workers}
    assert servers(access, workers) == on_local
    # worker3 cannot reach the VIP: its kubelet never renews its Lease through it
    blackhole = ["blackhole", f"{cluster.vip.address}/32"]
    lab.on("worker3", ["ip", "route", "add", *blackhole])
    try:
        # to the VIP: worker1 and worker2 together, then worker3, which fails, is put back alone
        # and stops the run (failure budget 0)
        started = time.monotonic()
        forward = make_plan(inventory_path, "repoint-nodes", {"server": vip, "hosts": WORKERS, "batch": "2",
                                                             "node_timeout": "10"})
        assert [s.hosts for s in forward.steps] == [("worker1", "worker2"), ("worker3",)]
        with Watch(inventory_path) as watch, pytest.raises(StepFailed) as failed:
            run_plan(forward, inventory_path, tmp_path / "forward.sqlite", probe=False)
        message = str(failed.value)
        print(f"to {vip}: {time.monotonic() - started:.1f} s; {message}")
        assert "\n" not in message
        assert "worker3: its kubelet did not renew" in message and "put back on its old kubeconfigs" in message
        assert f"kubeha resume {forward.operation_id}" in message
        watch.assert_served_and_ready()
        assert servers(access, workers) == {"worker1": ((vip,), (vip,)), "worker2": ((vip,), (vip,)),
                                            "worker3": ((local,), (local,))}
        with Journal(tmp_path / "forward.sqlite") as opened:
            outcomes = {r.step_id: r.outcome for r in opened.steps(forward.operation_id)}
        assert outcomes == {"repoint-workers-1": StepOutcome.DONE, "repoint-workers-2": StepOutcome.ROLLED_BACK}
    finally:
        lab.on("worker3", ["ip", "route", "del", *blackhole], check=False)

    # back to the node-local proxy (served on each node: checked through each node's SSH)
    try:
        started = time.monotonic()
        back = make_plan(inventory_path, "repoint-nodes", {"server": local, "hosts": WORKERS})
        assert [s.hosts for s in back.steps] == [("worker1", "worker2")]  # worker3 names it already
        with Watch(inventory_path) as watch:
            run_plan(back, inventory_path, tmp_path / "back.sqlite", probe=False)
        print(f"to {local}: {time.monotonic() - started:.1f} s")
        watch.assert_served_and_ready()
    finally:
        if servers(access, workers) != on_local:  # the lab is shared: repair, then report
            run_plan(make_plan(inventory_path, "repoint-nodes", {"server": local, "hosts": WORKERS}),
                     inventory_path, tmp_path / "repair.sqlite", probe=False)
    assert servers(access, workers) == on_local
    assert workloads(inventory_path)["pods"] == pods  # no pod on a worker deleted or made again
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr
