"""The probe's timeline as an inline SVG (pure: records in, markup out).

x is time since the run began; y is each request's latency on a log scale (1 ms .. the
probe's timeout and over), one line per path kind (the VIP, each node-local proxy, the
LB hosts, etcd writes); a failed request is a red tick on the top band, a failure its one
retry did not cure a taller one; each step's start is a dashed line with the step id as
its tooltip. Tens of thousands of records become at most one point per path per pixel
column (the slowest), so the file stays small and the browser fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from kubeha.probe.summary import ProbeRecord

WIDTH, HEIGHT = 960, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 28, 30
_MIN_MS, _MAX_MS = 1.0, 2000.0
_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f", "#bcbd22")


@dataclass(frozen=True)
class StepMark:
    """A step's start on the timeline (epoch seconds) and what it was."""

    ts: float
    step_id: str
    outcome: str | None


def _x(ts: float, started: float, span: float) -> float:
    return _LEFT + (ts - started) / span * (WIDTH - _LEFT - _RIGHT)


def _y(latency_ms: float) -> float:
    clipped = min(max(latency_ms, _MIN_MS), _MAX_MS)
    fraction = math.log10(clipped / _MIN_MS) / math.log10(_MAX_MS / _MIN_MS)
    return HEIGHT - _BOTTOM - fraction * (HEIGHT - _TOP - _BOTTOM - 14)


def _failed_after_retry(records: Sequence[ProbeRecord]) -> set[int]:
    """Indexes (into ``records`` of one path, in order) of first attempts whose retry failed too."""
    return {i for i, r in enumerate(records)
            if not r.retry and not r.ok and not (i + 1 < len(records) and records[i + 1].retry and records[i + 1].ok)}


def _series(records: Sequence[ProbeRecord], started: float, span: float) -> str:
    """The path's successes as a polyline: the slowest request per pixel column."""
    slowest: dict[int, float] = {}
    for r in records:
        if r.ok:
            column = int(_x(r.ts, started, span))
            slowest[column] = max(slowest.get(column, 0.0), r.latency_ms)
    return " ".join(f"{column},{_y(ms):.1f}" for column, ms in sorted(slowest.items()))


def path_kind(path: str) -> str:
    """Paths of one kind share a colour and a legend entry: each LB host's is "lb"."""
    return path.split("/", 1)[0] if path.startswith("lb/") else path


def probe_plot_svg(records: Sequence[ProbeRecord], marks: Sequence[StepMark], started: float, ended: float) -> str:
    """The timeline of one run as an ``<svg>`` element (see the module docstring)."""
    span = max(ended - started, 1e-3)
    by_path: dict[str, list[ProbeRecord]] = {}
    for record in records:
        by_path.setdefault(record.path, []).append(record)
    kinds = list(dict.fromkeys(path_kind(p) for p in by_path))
    colour = {kind: _COLOURS[i % len(_COLOURS)] for i, kind in enumerate(kinds)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="probe-plot" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="probe latency and failures over time">',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{WIDTH - _LEFT - _RIGHT}" height="{HEIGHT - _TOP - _BOTTOM}" '
             'fill="#fafafa" stroke="#ccc"/>']
    for ms in (1, 10, 100, 1000):
        y = _y(ms)
        parts.append(f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{ms} ms</text>')
    for i in range(6):
        seconds = span * i / 5
        x = _x(started + seconds, started, span)
        anchor = "end" if i == 5 else "middle"  # the last label inside the picture
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 10}" text-anchor="{anchor}" class="axis">{seconds:.0f} s</text>')
    for mark in marks:
        x = _x(mark.ts, started, span)
        stroke = "#d62728" if mark.outcome not in (None, "done", "skipped-already-done") else "#999"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{HEIGHT - _BOTTOM}" stroke="{stroke}" '
                     f'stroke-dasharray="3,3"><title>{escape(mark.step_id)} ({escape(mark.outcome or "unfinished")})'
                     '</title></line>')
    for path, path_records in by_path.items():
        points = _series(path_records, started, span)
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour[path_kind(path)]}" stroke-width="1.2" '
                         f'points="{points}"><title>{escape(path)}</title></polyline>')
    for path, path_records in by_path.items():
        uncured = _failed_after_retry(path_records)
        for i, r in enumerate(path_records):
            if not r.ok and not r.retry:
                x, tall = _x(r.ts, started, span), i in uncured
                parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP + 2}" y2="{_TOP + (14 if tall else 8)}" '
                             f'stroke="#d62728" stroke-width="2"><title>{escape(path)}: '
                             f'{escape(r.error or str(r.status))}</title></line>')
    x = _LEFT
    for kind in kinds:
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colour[kind]}"/>'
                     f'<text x="{x + 14}" y="17" class="legend">{escape(kind)}</text>')
        x += 24 + 7 * len(kind)
    parts.append(f'<text x="{x}" y="17" class="legend" fill="#d62728">| failed request</text></svg>')
    return "".join(parts)


__all__ = ["HEIGHT", "WIDTH", "StepMark", "path_kind", "probe_plot_svg"]
