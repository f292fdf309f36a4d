"""Fixtures that build a real lab. Each lab is removed when its tests end, also on failure."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from kubeha.lab import Lab, LabSpec
from kubeha.lab.lab import REQUIRED_BINARIES, leftovers
from kubeha.model import Layout


def require_lab_prerequisites() -> None:
    """The lab tests never skip: without root or the packages they fail and say why."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces): run scripts/test.sh as root")
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(f"lab tests need {', '.join(missing)}: run scripts/setup.sh")


@pytest.fixture(scope="module", params=[Layout.KUBEADM, Layout.KUBEASZ], ids=lambda l: l.value)
def lab(request):
    require_lab_prerequisites()
    lab = Lab(log=print)
    started = time.monotonic()
    try:
        lab.up(LabSpec(layout=request.param))
        lab.up_seconds = time.monotonic() - started
        yield lab
    finally:
        lab.down()
        assert not leftovers(lab.paths.root)
