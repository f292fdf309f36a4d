"""What a check says: one line per subject, pass, warn or fail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from kubeha.checks.snapshot import ClusterSnapshot


class Status(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    name: str  # the check: "etcd quorum"
    status: Status
    subject: str  # what it is about: a host, a member, a URL, "etcd"
    reason: str  # one line

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "subject": self.subject, "reason": self.reason}


Check = Callable[[ClusterSnapshot], list[CheckResult]]


def passed(name: str, subject: str, reason: str) -> CheckResult:
    return CheckResult(name, Status.PASS, subject, reason)


def warned(name: str, subject: str, reason: str) -> CheckResult:
    return CheckResult(name, Status.WARN, subject, reason)


def failed(name: str, subject: str, reason: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, subject, reason)


def verdict(name: str, subject: str, problems: list[str], ok: str) -> CheckResult:
    """Failed with every problem on one line, or passed with ``ok``."""
    return failed(name, subject, "; ".join(problems)) if problems else passed(name, subject, ok)


def gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
