"""Fixtures that build a real lab. Each lab is removed when its tests end, also on failure."""

from __future__ import annotations

import shutil
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


@pytest.fixture
def inventory_path(lab, tmp_path):
    """A copy of the lab's inventory that an operation may rewrite."""
    path = tmp_path / "cluster.yaml"
    shutil.copy(lab.paths.inventory, path)
    return path


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: it must see the extended mark
def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.layouts(Layout.X, ...)``: the test runs on those layouts' labs only
    (deselected on the others, so it is not reported as skipped).
    ``@pytest.mark.extended_on(Layout.X, ...)``: on those layouts' labs the test is marked
    ``extended`` (run by `scripts/test.sh -m extended tests/lab`, not by default)."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("layouts")
        layout = getattr(item, "callspec", None) and item.callspec.params.get("lab")
        extended = item.get_closest_marker("extended_on")
        if extended and layout in extended.args:
            item.add_marker(pytest.mark.extended)
        (dropped if marker and layout is not None and layout not in marker.args else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
