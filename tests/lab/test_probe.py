"""The availability probe on the shared lab: a healthy lab shows no failure on any path and
no lost write; stopping one LB host's haproxy shows on its path only."""

from __future__ import annotations

import stat
import time

import pytest
from helpers.wait import wait_for

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.probe import ETCD_PATH, Probe

pytestmark = pytest.mark.lab

PROBE_SECONDS = 5
OUTAGE_SECONDS = 1.0


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "keep-alive"])
def test_a_healthy_lab_answers_every_request_on_every_path(lab, keep_alive, tmp_path):
    inventory = load_inventory(lab.paths.inventory)
    cluster = inventory.cluster
    with ClusterAccess(inventory) as access:
        with Probe(access, node_proxies=True, etcd_writes=True, keep_alive=keep_alive,
                   timeline=tmp_path / "probe.jsonl") as probe:
            time.sleep(PROBE_SECONDS)
        summary = probe.summary
        assert access.etcd().range_prefix(f"/kubeha/probe/{probe.run_id}/")[0] == []  # cleaned up
    for p in summary.paths:
        print(p)
    print(summary.etcd)
    expected = {"vip", ETCD_PATH, *(f"lb/{h.name}" for h in cluster.lb_hosts),
                *(f"node-proxy/{h.name}" for h in cluster.workers)}
    assert {p.path for p in summary.paths} == expected
    assert all(p.failures == 0 for p in summary.paths), summary.paths
    assert summary.etcd is not None and summary.etcd.lost == () and summary.etcd.acknowledged > 40
    # every path was asked throughout (at least twice a second): the rate itself depends on
    # how busy the machine is (a new TLS connection per request costs both ends CPU) and is
    # not this test's business
    assert all(p.requests >= 2 * PROBE_SECONDS for p in summary.paths), summary.paths
    assert sum(1 for _ in (tmp_path / "probe.jsonl").open()) == len(probe.records)
    assert stat.S_IMODE((tmp_path / "probe.jsonl").stat().st_mode) == 0o600  # its owner's only


def test_a_stopped_haproxy_shows_on_its_lb_path_only(lab):
    inventory = load_inventory(lab.paths.inventory)
    cluster = inventory.cluster
    holders = lab.vip_holders(cluster)
    # keepalived may move the VIP off a holder whose haproxy stops: stop a non-holder's
    victim = next(h.name for h in reversed(cluster.lb_hosts) if h.name not in holders)
    with ClusterAccess(inventory) as access:
        try:
            with Probe(access) as probe:
                time.sleep(0.5)
                lab.on(victim, ["systemctl", "stop", "haproxy"])
                time.sleep(OUTAGE_SECONDS)
                lab.on(victim, ["systemctl", "start", "haproxy"])
                wait_for(lambda: [r for r in probe.records[-20:] if r.path == f"lb/{victim}" and r.ok],
                         10, f"{victim}'s haproxy to answer again")
                time.sleep(0.5)
        finally:
            lab.on(victim, ["systemctl", "start", "haproxy"])
    summary = probe.summary
    for p in summary.paths:
        print(p)
    stopped = summary.path(f"lb/{victim}")
    assert stopped.failures_after_retry > 0
    assert stopped.longest_gap_ms >= OUTAGE_SECONDS * 1000
    assert summary.path("vip").failures == 0
