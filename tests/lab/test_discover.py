"""`kubeha inventory discover` on a real lab: from any master, directly or tunnelled, the
inventory it writes is the lab's own."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kubeha.discover import discover_inventory
from kubeha.inventory import load_inventory
from kubeha.model import Cluster
from kubeha.lab import Lab

pytestmark = pytest.mark.lab


def without_spares(cluster: Cluster) -> Cluster:
    """The lab inventory lists its spares without roles; discovery cannot know of them."""
    return cluster.model_copy(update={"hosts": tuple(h for h in cluster.hosts if h.roles)})


def test_discover_from_a_master_writes_the_labs_inventory(lab: Lab, tmp_path):
    expected = load_inventory(lab.paths.inventory)
    seed = expected.cluster.masters[1]
    output = tmp_path / "cluster.yaml"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "kubeha.cli", "inventory", "discover", f"root@{seed.address}", "-o", str(output),
         "--ssh-key", str(lab.paths.ssh_key), "--known-hosts", str(lab.paths.known_hosts)],
        capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    discovered = load_inventory(output)
    assert discovered.cluster == without_spares(expected.cluster)
    assert discovered.ssh == expected.ssh
    print(f"discover ({expected.cluster.layout.value}): {elapsed:.1f} s wall, CLI included")


def test_discover_through_ssh_tunnels_finds_the_same(lab: Lab):
    expected = load_inventory(lab.paths.inventory)
    discovered = discover_inventory(f"root@{expected.cluster.masters[0].address}", key_file=lab.paths.ssh_key,
                                    known_hosts=lab.paths.known_hosts, prefer_tunnel=True)
    assert discovered.cluster == without_spares(expected.cluster)


def test_discover_refuses_a_worker_in_one_line(lab: Lab):
    worker = load_inventory(lab.paths.inventory).cluster.workers[0]
    done = subprocess.run(
        [sys.executable, "-m", "kubeha.cli", "inventory", "discover", f"root@{worker.address}",
         "--ssh-key", str(lab.paths.ssh_key), "--known-hosts", str(lab.paths.known_hosts)],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "500", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "runs no kube-apiserver" in done.stderr and len(done.stderr.strip().splitlines()) == 1
