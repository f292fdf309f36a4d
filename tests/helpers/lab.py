"""Shared by the lab tests."""

from __future__ import annotations

import os
import shutil

import pytest

from kubeha.lab.lab import REQUIRED_BINARIES
from kubeha.lab.namespaces import LabNames


def require_lab_prerequisites() -> None:
    """The lab tests never skip: without root or the packages they fail and say why."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces): run scripts/test.sh as root")
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(f"lab tests need {', '.join(missing)}: run scripts/setup.sh")


def side_lab_names() -> LabNames:
    """Names for a test's own lab, beside the shared `lab` fixture's (KUBEHA_LAB_ID, or 0):
    building it must never remove the shared one as "stale"."""
    return LabNames(str(int(os.environ.get("KUBEHA_LAB_ID") or 0) + 100))
