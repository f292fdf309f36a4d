"""`kubeha check` on a real lab: it passes when healthy, and names the one thing each test
breaks (then repairs): a stopped etcd member, a kubeconfig pointed at one master, the VIP
missing from an apiserver cert, a stale backend in a node-local proxy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from helpers.wait import wait_for

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities, reissue_apiserver_cert
from kubeha.checks import CheckResult, Status, gather_snapshot, run_checks
from kubeha.hosts import BackupSet
from kubeha.inventory import Inventory, load_inventory
from kubeha.lab import Lab
from kubeha.model import Layout
from kubeha.pki import SubjectAltNames
from kubeha.render import rewrite_kubeconfig_server

pytestmark = pytest.mark.lab

REPAIR_TIMEOUT = 60.0


def check(inventory: Inventory) -> list[CheckResult]:
    with ClusterAccess(inventory) as access:
        return run_checks(gather_snapshot(access))


def failures(inventory: Inventory) -> list[CheckResult]:
    return [r for r in check(inventory) if r.status is Status.FAIL]


def has_failure(inventory: Inventory, name: str, subject: str) -> list[CheckResult]:
    """The failures of ``inventory`` once one of check ``name`` about ``subject`` is among them."""
    found = failures(inventory)
    return found if any(r.name == name and r.subject == subject for r in found) else []


def the_failure(found: list[CheckResult], name: str, subject: str) -> CheckResult:
    return next(r for r in found if r.name == name and r.subject == subject)


def assert_only_failure(inventory: Inventory, name: str, subject: str, reason: str) -> None:
    found = failures(inventory)
    assert [(r.name, r.subject, r.reason) for r in found] == [(name, subject, reason)]


@contextmanager
def repaired(inventory: Inventory, repair) -> Iterator[None]:
    """Run the test body, then ``repair`` and wait until every check passes again."""
    try:
        yield
    finally:
        repair()
        wait_for(lambda: not failures(inventory), REPAIR_TIMEOUT, "every check to pass after the repair")


@contextmanager
def file_edited(lab: Lab, inventory: Inventory, host: str, path, edit: Callable[[str], str],
                reload: list[str] | None = None) -> Iterator[None]:
    """The lab host's file changed by ``edit`` (then ``reload`` run) for the body; restored after."""
    file = lab.paths.on_host(host, path)
    original = file.read_text()

    def write(text: str) -> None:
        file.write_text(text)
        if reload:
            lab.on(host, reload)

    write(edit(original))
    with repaired(inventory, lambda: write(original)):
        yield


def test_healthy_lab_passes_every_check(lab: Lab):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kubeha.cli", "check", "-i", str(lab.paths.inventory), "--json"],
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    results = json.loads(done.stdout)
    assert [r for r in results if r["status"] != "pass"] == [], done.stderr
    assert done.returncode == 0
    names = {r["name"] for r in results}
    assert {"ssh", "etcd quorum", "apiserver ready", "VIP holder", "LB backends", "node-local proxy",
            "kubeconfigs", "etcd servers", "cert expiry", "apiserver SANs", "fstab", "clock"} <= names
    print(f"kubeha check: {len(results)} results in {seconds:.1f} s")


def test_stopped_etcd_member_fails_etcd_health(lab: Lab):
    inventory = load_inventory(lab.paths.inventory)
    member = inventory.cluster.host("master3")
    kubeadm = inventory.cluster.layout is Layout.KUBEADM
    manifest, moved = "/etc/kubernetes/manifests/etcd.yaml", "/etc/kubernetes/etcd.yaml.moved"
    if kubeadm:
        lab.on(member.name, ["mv", manifest, moved])
    else:
        lab.on(member.name, ["systemctl", "stop", "etcd"])

    def repair() -> None:
        if kubeadm:
            lab.on(member.name, ["mv", moved, manifest])
        else:
            lab.on(member.name, ["systemctl", "start", "etcd"])

    with repaired(inventory, repair):
        found = wait_for(lambda: has_failure(inventory, "etcd health", member.name), 30, "etcd health to fail")
        reason = the_failure(found, "etcd health", member.name).reason
        assert reason.startswith(f"https://{member.address}:2379 does not answer: ")
        assert not [r for r in found if r.name == "etcd quorum"]  # 2 of 3 still make a quorum


def test_kubeconfig_pointed_at_one_master_fails(lab: Lab):
    inventory = load_inventory(lab.paths.inventory)
    cluster = inventory.cluster
    worker, master = cluster.workers[0], cluster.masters[0]
    path = cluster.paths.kubelet_kubeconfig
    single = f"https://{master.address}:{cluster.apiserver_port}"
    with file_edited(lab, inventory, worker.name, path, lambda text: rewrite_kubeconfig_server(text, single)):
        assert_only_failure(inventory, "kubeconfigs", worker.name,
                            f"{path} points at {single} (only master {master.name}), not {cluster.node_local_endpoint}")


def test_vip_missing_from_apiserver_cert_fails(lab: Lab):
    inventory = load_inventory(lab.paths.inventory)
    cluster = inventory.cluster
    target = cluster.masters[1]
    backup = BackupSet(f"test-check-sans-{cluster.layout.value}")
    with ClusterAccess(inventory) as access:
        auth = load_authorities(access, cluster.masters[0])
        reissue_apiserver_cert(access, target, auth, remove=SubjectAltNames(ip_addresses=(cluster.vip.address,)),
                               backup=backup)

    def repair() -> None:
        with ClusterAccess(inventory) as access:
            access.restore(target, backup)

    with repaired(inventory, repair):
        # the running apiserver keeps its old cert until restarted: only the file is wrong
        assert_only_failure(inventory, "apiserver SANs", target.name,
                            f"{cluster.paths.apiserver.cert} lacks {cluster.vip.address}: clients using it fail TLS")


def test_stale_node_proxy_backend_fails(lab: Lab):
    inventory = load_inventory(lab.paths.inventory)
    cluster = inventory.cluster
    worker = cluster.workers[0]
    stale = lab.topology().spares[0].address
    line = f"        server {stale}:{cluster.apiserver_port} max_fails=1 fail_timeout=5s;\n"
    with file_edited(lab, inventory, worker.name, cluster.paths.node_proxy_conf,
                     lambda text: text.replace("        least_conn;\n", "        least_conn;\n" + line),
                     reload=["systemctl", "reload", "nginx"]):
        assert_only_failure(inventory, "node-local proxy", worker.name,
                            f"stale backend {stale}:{cluster.apiserver_port} is no master's apiserver")
