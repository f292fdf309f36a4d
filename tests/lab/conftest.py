"""Fixtures that build a real lab. Each lab is removed when its tests end, also on failure."""

from __future__ import annotations

import time

import pytest
from helpers.lab import require_lab_prerequisites

from kubeha.lab import Lab, LabSpec
from kubeha.model import Layout


# Session scope: pytest groups the tests by layout, so each layout's lab is built once for
# every module. Tests that break something repair it before they end.
@pytest.fixture(scope="session", params=[Layout.KUBEADM, Layout.KUBEASZ], ids=lambda l: l.value)
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
        assert not lab.leftovers()
