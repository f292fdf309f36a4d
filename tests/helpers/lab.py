"""Shared by the lab tests."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from kubeha.lab.lab import REQUIRED_BINARIES


def require_lab_prerequisites() -> None:
    """The lab tests never skip: without root or the packages they fail and say why."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces): run scripts/test.sh as root")
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(f"lab tests need {', '.join(missing)}: run scripts/setup.sh")


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition`` every 100 ms until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
