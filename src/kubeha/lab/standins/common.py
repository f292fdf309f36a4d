"""What every control-plane stand-in shares: real-style flags, timestamped logs, SIGTERM, times.

Flags follow the Go ``pflag`` conventions of the real binaries: ``--flag=value`` and
``--flag value`` (a single leading dash works too), booleans as ``--flag`` or
``--flag=false``. Flags a stand-in does not know are ignored with one warning line, so the
real unit files and manifests run unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import signal
import sys
import threading
from collections.abc import Mapping

FlagValue = str | bool

# Go duration units (time.ParseDuration), in seconds.
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as ``40s``, ``1m30s``, ``500ms`` (a bare number is seconds)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def parse_bool(text: FlagValue) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in ("1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def parse_flags(argv: list[str], defaults: Mapping[str, FlagValue]) -> tuple[dict[str, FlagValue], list[str]]:
    """The flag values (``defaults`` overridden by ``argv``) and the names of unknown flags.

    A flag whose default is a bool is boolean: it never takes the next argument as its value.
    """
    values = dict(defaults)
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            unknown.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        boolean = isinstance(defaults.get(name), bool)
        # "--flag value": the next argument is the value unless it is a flag itself
        if not has_value and not boolean and i < len(argv) and not argv[i].startswith("-"):
            value = argv[i]
            i += 1
        if name not in defaults:
            unknown.append(f"--{name}")
        elif boolean:
            values[name] = parse_bool(value) if has_value else True
        else:
            values[name] = value
    return values, unknown


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def start_standin(component: str, argv: list[str] | None,
                  defaults: Mapping[str, FlagValue]) -> tuple[dict[str, FlagValue], logging.Logger, threading.Event]:
    """Parse flags, log to stderr (debug with ``--v`` >= 4, like klog), handle SIGTERM/SIGINT.

    Returns the flag values, the logger and an event set when the process is asked to stop.
    """
    values, unknown = parse_flags(sys.argv[1:] if argv is None else argv, {"v": "0", **defaults})
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger(component)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if int(str(values["v"]) or 0) >= 4 else logging.INFO)
    if unknown:
        log.warning("ignoring unknown flags: %s", " ".join(unknown))
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return values, log, stopping


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def kube_time(at: dt.datetime | None = None) -> str:
    """A metav1.Time: RFC 3339 in UTC, whole seconds."""
    return (at or utc_now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(at: dt.datetime | None = None) -> str:
    """A metav1.MicroTime (Lease times): RFC 3339 in UTC with microseconds."""
    return (at or utc_now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)
