"""Where a benchmark's result came from: when, on what machine, from which commit. Every
script under bench/ starts its JSON with these, so a number can be traced to the code that
made it ("-dirty": the checkout had changes not committed)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def commit() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    done = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def provenance() -> dict[str, object]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)},
        "commit": commit(),
    }
