"""`lab up` after a crashed run removes the stale lab; `lab down` leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kubeha.lab import Lab, LabSpec
from kubeha.lab import namespaces as ns

from helpers.lab import require_lab_prerequisites, side_lab_names

pytestmark = pytest.mark.lab

KUBEHA = [sys.executable, "-m", "kubeha.cli"]


def test_lab_up_after_a_crashed_run_removes_the_stale_lab_and_down_leaves_nothing():
    require_lab_prerequisites()
    lab = Lab(side_lab_names())
    try:
        crashed = subprocess.Popen([*KUBEHA, "lab", "up", "--masters", "1", "--spares", "1",
                                    "--workers", "1"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   env=os.environ | {"KUBEHA_LAB_ID": lab.names.lab_id})
        deadline = time.monotonic() + 60
        while len(ns.lab_netns(lab.names)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # well into building: namespaces, mounts, sshd, services
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.wait()
        assert lab.exists()

        topology = lab.up(LabSpec(masters=1, spares=1, workers=1))
        assert [h["name"] for h in lab.status()["hosts"]] == [h.name for h in topology.hosts]
    finally:
        lab.down()
    assert lab.leftovers() == []
