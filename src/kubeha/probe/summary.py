"""The probe's timeline and its summary: pure functions, no I/O.

A timeline is every request of every path, in the order each path made them. A failed
request is retried once at once; the retry is its own record (``retry=True``) right after
the failure on the same path, so "failed" and "failed even after one retry" both come from
the timeline alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProbeRecord:
    """One request of one path: started at ``ts`` (epoch seconds), answered or failed
    ``latency_ms`` later."""

    ts: float
    path: str
    ok: bool
    latency_ms: float
    status: int | None = None  # HTTP status; None when no answer came (or not HTTP: etcd)
    error: str | None = None
    retry: bool = False  # the one immediate retry of the failure before it

    @property
    def done(self) -> float:
        return self.ts + self.latency_ms / 1000

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PathSummary:
    path: str
    requests: int  # first attempts; retries are not counted again
    failures: int  # first attempts that failed
    failures_after_retry: int  # first attempts whose one retry failed too
    longest_gap_ms: float  # longest time without a success, the run's start and end included
    p50_ms: float | None  # latency of successful requests (a failure's time is its timeout)
    p99_ms: float | None


@dataclass(frozen=True)
class EtcdWritesSummary:
    writes: int
    acknowledged: int
    lost: tuple[int, ...] | None  # acknowledged numbers not read back; None: could not read back


@dataclass(frozen=True)
class ProbeSummary:
    started: float
    ended: float
    paths: tuple[PathSummary, ...]
    etcd: EtcdWritesSummary | None = None

    @property
    def healthy(self) -> bool:
        """Every path answered every request, allowing one retry, and no write was lost."""
        return (all(p.failures_after_retry == 0 for p in self.paths)
                and (self.etcd is None or self.etcd.lost == ()))

    def path(self, name: str) -> PathSummary:
        return next(p for p in self.paths if p.path == name)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def longest_gap(success_times: Iterable[float], started: float, ended: float) -> float:
    """Longest stretch (seconds) of [started, ended] without a success time."""
    times = [started, *sorted(t for t in success_times if started <= t <= ended), ended]
    return max(b - a for a, b in zip(times, times[1:]))


def summarize_path(path: str, records: Sequence[ProbeRecord], started: float, ended: float) -> PathSummary:
    """One path's summary from its records, in the order they were made."""
    firsts = [r for r in records if not r.retry]
    failures_after_retry = sum(
        1 for i, r in enumerate(records)
        if not r.retry and not r.ok
        and not (i + 1 < len(records) and records[i + 1].retry and records[i + 1].ok))
    ok = [r for r in records if r.ok]
    latencies = [r.latency_ms for r in ok]
    return PathSummary(
        path=path,
        requests=len(firsts),
        failures=sum(1 for r in firsts if not r.ok),
        failures_after_retry=failures_after_retry,
        longest_gap_ms=round(longest_gap((r.done for r in ok), started, ended) * 1000, 1),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
    )


def lost_writes(acknowledged: Iterable[int], read_back: Iterable[int]) -> tuple[int, ...]:
    """Acknowledged write numbers that were not read back."""
    return tuple(sorted(set(acknowledged) - set(read_back)))


def summarize(records: Sequence[ProbeRecord], started: float, ended: float, *,
              etcd: EtcdWritesSummary | None = None) -> ProbeSummary:
    """The summary of a run's timeline, paths in the order they first appear."""
    by_path: dict[str, list[ProbeRecord]] = {}
    for record in records:
        by_path.setdefault(record.path, []).append(record)
    return ProbeSummary(started=started, ended=ended, etcd=etcd,
                        paths=tuple(summarize_path(p, rs, started, ended) for p, rs in by_path.items()))
