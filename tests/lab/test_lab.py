"""The lab is a real HA control plane: kubectl through the VIP, etcd over TLS, VRRP failover,
an apiserver down without the API going down, kubelets renewing through node-local proxies."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone

import httpx
import pytest
from helpers.wait import wait_for

from kubeha.lab import Lab
from kubeha.lab import namespaces as ns
from kubeha.lab.lab import ready_nodes
from kubeha.model import Layout

pytestmark = pytest.mark.lab


def test_lab_is_up_with_all_hosts(lab: Lab):
    topology = lab.topology()
    status = lab.status()
    assert [h["name"] for h in status["hosts"]] == [h.name for h in topology.hosts]
    for host in status["hosts"]:
        assert host["sshd"], host
        assert all(state == "active" for state in host["services"].values()), host
    print(f"lab up: {lab.up_seconds:.1f} s, memory {status['memory_mib']} MiB PSS, "
          f"{status['processes']} processes")


def test_kubectl_get_nodes_through_the_vip(lab: Lab):
    cluster = lab.topology().cluster
    out = subprocess.run(["kubectl", "--kubeconfig", str(lab.paths.admin_kubeconfig), "get", "nodes",
                          "--no-headers"], capture_output=True, text=True, timeout=30, check=True)
    rows = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()}
    assert rows == {h.name: "Ready" for h in cluster.hosts}, out.stdout + out.stderr
    assert cluster.vip is not None and str(cluster.vip.address) in lab.paths.admin_kubeconfig.read_text()


def test_etcdctl_over_ssh_and_tls_shows_three_members_and_one_leader(lab: Lab):
    cluster = lab.topology().cluster
    client = cluster.paths.etcd_client
    endpoints = ",".join(cluster.etcd_client_urls())
    cmd = lab.ssh_command("master1", [
        "ETCDCTL_API=3", "etcdctl", f"--endpoints={endpoints}", f"--cacert={cluster.paths.etcd_ca.cert}",
        f"--cert={client.cert}", f"--key={client.key}", "endpoint", "status", "-w", "json"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    statuses = json.loads(out.stdout)
    assert len(statuses) == 3
    leaders = {s["Status"]["leader"] for s in statuses}
    assert len(leaders) == 1
    assert sum(s["Status"]["header"]["member_id"] in leaders for s in statuses) == 1


def test_ssh_refuses_an_unknown_host_key(lab: Lab, tmp_path):
    cmd = lab.ssh_command("worker1", ["true"])
    known = tmp_path / "known_hosts"
    host = lab.host("worker1")
    known.write_text(f"{host.address} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd1cm9uZ2tleXdyb25na2V5d3JvbmdrZXl3cm9u\n")
    cmd[cmd.index(f"UserKnownHostsFile={lab.paths.known_hosts}")] = f"UserKnownHostsFile={known}"
    assert subprocess.run(cmd, capture_output=True, timeout=30).returncode != 0
    assert subprocess.run(lab.ssh_command("worker1", ["hostname"]), capture_output=True, text=True,
                          timeout=30).stdout.strip() == "worker1"


def _api_reads(lab: Lab, seconds: float) -> tuple[int, list[str]]:
    """Read through the VIP every 50 ms for ``seconds``; return (requests, failures)."""
    failures = []
    count = 0
    with lab.api(lab.topology().cluster) as api:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            count += 1
            try:
                r = api.get("/api/v1/namespaces/default")
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")
            except httpx.HTTPError as e:
                failures.append(repr(e))
            time.sleep(0.05)
    return count, failures


def test_stopping_one_apiserver_keeps_the_api_served_through_the_vip(lab: Lab):
    cluster = lab.topology().cluster
    victim = cluster.masters[1]
    if cluster.layout is Layout.KUBEADM:
        manifest = f"{cluster.paths.manifests_dir}/kube-apiserver.yaml"
        stop = ["mv", manifest, "/etc/kubernetes/kube-apiserver.yaml.stopped"]
        start = ["mv", "/etc/kubernetes/kube-apiserver.yaml.stopped", manifest]
    else:
        stop, start = ["systemctl", "stop", "kube-apiserver"], ["systemctl", "start", "kube-apiserver"]
    direct = f"https://{victim.address}:{cluster.apiserver_port}/readyz"
    started = datetime.now(timezone.utc)  # the lab is shared: count only what this test causes
    lab.on(victim.name, stop)
    try:
        wait_for(lambda: _unreachable(lab, direct), 30, f"the apiserver on {victim.name} to stop")
        count, failures = _api_reads(lab, 3.0)
        assert count > 30 and failures == []
        with lab.api(cluster) as api:
            stamp = started.replace(microsecond=0)  # renewTime has second precision at least
            wait_for(lambda: all(_renew_time(api, w.name) >= stamp for w in cluster.workers), 25,
                     "every worker to renew its lease with one apiserver down")
        for worker in cluster.workers:
            # a kubelet whose pooled connection ran to the stopped apiserver fails that one
            # renewal and its immediate retry succeeds: one retry allowed, never two
            assert len(renewal_failures_since(lab, worker.name, started)) <= 1
    finally:
        lab.on(victim.name, start)
    wait_for(lambda: not _unreachable(lab, direct), 30, f"the apiserver on {victim.name} to return")


def _unreachable(lab: Lab, url: str) -> bool:
    try:
        with lab.api(lab.topology().cluster, server=url) as api:
            return api.get(url).status_code != 200
    except httpx.HTTPError:
        return True


def test_worker_kubelets_renew_their_leases_through_the_node_local_proxy(lab: Lab):
    cluster = lab.topology().cluster
    started = datetime.now(timezone.utc)  # the lab is shared: count only this test's window
    for worker in cluster.workers:
        kubeconfig = lab.paths.on_host(worker.name, cluster.paths.kubelet_kubeconfig).read_text()
        assert f"server: {cluster.node_local_endpoint}" in kubeconfig
    with lab.api(cluster) as api:
        first = {w.name: _renew_time(api, w.name) for w in cluster.workers}
        wait_for(lambda: all(_renew_time(api, w.name) > first[w.name] for w in cluster.workers), 25,
                 "every worker to renew its lease again")
        assert ready_nodes(api) >= {w.name for w in cluster.workers}
    for worker in cluster.workers:
        assert renewal_failures_since(lab, worker.name, started) == []


def renewal_failures_since(lab: Lab, host: str, since: datetime) -> list[str]:
    """Lines of the kubelet's log (journalctl -u kubelet) reporting a failed Lease renewal."""
    log = lab.on(host, ["journalctl", "-u", "kubelet", "--no-pager"]).stdout
    return [line for line in log.splitlines() if "failed to renew lease" in line
            and datetime.fromisoformat(line.split()[0]).astimezone(timezone.utc) >= since]  # local time, like journald


def _renew_time(api: httpx.Client, node: str) -> datetime:
    lease = api.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}").json()
    stamp = lease["spec"]["renewTime"].replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).astimezone(timezone.utc)


def test_exactly_one_vip_holder_and_killing_its_keepalived_moves_the_vip(lab: Lab):
    cluster = lab.topology().cluster
    holders = lab.vip_holders(cluster)
    assert len(holders) == 1
    holder = holders[0]
    pids = [p for p in ns.pids_in_netns(lab.names.netns(holder)) if _comm(p) == "keepalived"]
    assert pids
    for pid in pids:
        ns.kill_all({pid})  # SIGKILL: no graceful VRRP priority-0 advert
    new = wait_for(lambda: [h for h in lab.vip_holders(cluster) if h != holder], 10,
                   "another master to take the VIP")
    assert len(new) == 1
    count, failures = _api_reads(lab, 1.0)
    assert failures == []
    # the lab is shared: keepalived runs again on the old holder before the test ends (a
    # start that finds the killed daemon's pid file still naming an unreaped process exits
    # at once, as keepalived does: started again then)
    wait_for(lambda: _restarted(lab, holder, "keepalived"), 30, f"keepalived active again on {holder}")
    try:
        wait_for(lambda: len(lab.vip_holders(cluster)) == 1, 15, "a single VIP holder again")
    except AssertionError as e:
        raise AssertionError(f"{e}; holders now: {lab.vip_holders(cluster) or 'none'}") from None


def _restarted(lab: Lab, host: str, unit: str) -> bool:
    lab.on(host, ["systemctl", "restart", unit])
    time.sleep(1)
    return lab.on(host, ["systemctl", "is-active", unit], check=False).stdout.strip() == "active"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
