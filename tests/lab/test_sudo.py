"""kubeha as a non-root user: through sudo where allowed, a one-line refusal where not."""

from __future__ import annotations

import pytest

from kubeha.access import ClusterAccess
from kubeha.hosts import BackupSet
from kubeha.hosts.errors import SudoRefused
from kubeha.inventory import Inventory, dump_inventory, load_inventory, parse_inventory
from kubeha.lab import Lab

pytestmark = pytest.mark.lab


def as_user(lab: Lab, user: str) -> Inventory:
    """The lab's inventory as cluster.yaml would say `ssh: {user: <user>, sudo: true}`."""
    text = dump_inventory(load_inventory(lab.paths.inventory))
    return parse_inventory(text.replace("  user: root\n", f"  user: {user}\n").replace(
        "  sudo: false\n", "  sudo: true\n"))


def test_a_sudo_user_runs_as_root_and_writes_root_files(lab: Lab):
    inventory = as_user(lab, "ops")
    worker = inventory.cluster.workers[0]
    assert worker.ssh_user == "ops"
    with ClusterAccess(inventory) as access:
        assert access.run(worker, ["id", "-un"], check=True).stdout.strip() == "root"
        backup = BackupSet("test-sudo")
        access.put_file(worker, "/etc/kubernetes/kubeha-sudo-test", b"x\n", mode=0o600, backup=backup)
        stat = access.stat(worker, "/etc/kubernetes/kubeha-sudo-test")
        assert (stat.uid, stat.mode & 0o777) == (0, 0o600)
        access.restore(worker, backup)
        assert access.get_file(worker, "/etc/kubernetes/kubeha-sudo-test") is None


def test_a_user_without_sudo_gets_a_one_line_refusal(lab: Lab):
    inventory = as_user(lab, "nosudo")
    worker = inventory.cluster.workers[0]
    with ClusterAccess(inventory) as access, pytest.raises(SudoRefused) as refused:
        access.run(worker, ["id", "-un"], check=True)
    message = str(refused.value)
    assert "\n" not in message and worker.name in message and "nosudo" in message
