"""Clusters the render tests share (3 masters and 1 master, both layouts), and the tool runner."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kubeha.model import Cluster, Host, Layout, Role, VirtualIP

VIP = "10.77.0.100"
SHAPES = [(masters, layout) for masters in (3, 1) for layout in Layout]
SHAPE_IDS = [f"{masters}m-{layout.value}" for masters, layout in SHAPES]


def make_cluster(masters: int, layout: Layout) -> Cluster:
    """``masters`` stacked masters m1.. (10.77.0.11..) and one worker w1 (10.77.0.21)."""
    hosts = [
        Host(name=f"m{i}", address=f"10.77.0.{10 + i}", roles={Role.MASTER, Role.ETCD})
        for i in range(1, masters + 1)
    ]
    hosts.append(Host(name="w1", address="10.77.0.21", roles={Role.WORKER}))
    return Cluster(hosts=tuple(hosts), layout=layout, vip=VirtualIP(address=VIP))


@pytest.fixture(params=SHAPES, ids=SHAPE_IDS)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return make_cluster(*request.param)


def run(*argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program of this machine; fail the test, saying what to install, where it is missing."""
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is not installed: run scripts/setup.sh")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def run_in_namespaces(script: str, *, net: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``sh -ec script`` in a private mount namespace (and network namespace with ``net``):
    its mounts and interfaces vanish with it."""
    return run("unshare", "--mount", *(["--net"] if net else []), "sh", "-ec", script, timeout=timeout)

