"""Where a benchmark's result came from: when, on what machine, from which commit. Every
script under bench/ starts its JSON with these, so a number can be traced to the code that
made it ("-dirty": the code had changes not committed)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def commit() -> str | None:
    """The checkout's commit, or None outside a git checkout; "-dirty" when code differs from it
    (results and docs being rewritten by the benches themselves do not count)."""
    here = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", "../src", "../scripts", "*.py")
    return (head + ("-dirty" if changed else "")) or None


def provenance() -> dict[str, object]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)},
        "commit": commit(),
    }
