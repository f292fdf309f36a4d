"""What every control-plane stand-in shares: real-style flags, timestamped logs, SIGTERM, times.

Flags follow the Go ``pflag`` conventions of the real binaries: ``--flag=value`` and
``--flag value`` (a single leading dash works too), booleans as ``--flag`` or
``--flag=false``. Flags a stand-in does not know are ignored with one warning line, so the
real unit files and manifests run unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class StopEvent(threading.Event):
    """Set when the process is asked to stop; waited for in slices. A signal delivered to
    another thread does not wake a main thread blocked in a lock, and Python runs signal
    handlers only in the main thread: an apiserver serving many connections could ignore
    SIGTERM until systemd's SIGKILL (seen in the runbook replay bench)."""

    SLICE = 0.2

    def wait(self, timeout: float | None = None) -> bool:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while not self.is_set() and (left := deadline - time.monotonic()) > 0:
            super().wait(min(self.SLICE, left))
        return self.is_set()


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
    stopping = StopEvent()

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


# --bind-address and --secure-port of kube-controller-manager (10257) and kube-scheduler (10259)
def secure_serving_flags(port: int) -> dict[str, FlagValue]:
    return {"bind-address": "0.0.0.0", "secure-port": str(port)}


def _self_signed(host: str) -> ssl.SSLContext:
    """A TLS context with a fresh self-signed serving cert, as the real components make one
    when no --tls-cert-file is given."""
    from cryptography import x509  # only the components that serve /healthz pay for the import
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host}@{int(dt.datetime.now().timestamp())}")])
    now = utc_now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:  # the ssl module loads keys from files only
        cert_file, key_file = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        context.load_cert_chain(cert_file, key_file)
    return context


def serve_healthz(flags: Mapping[str, FlagValue], component: str, log: logging.Logger) -> None:
    """Serve HTTPS ``/healthz`` (``ok``) on --bind-address:--secure-port in a daemon thread,
    as kube-controller-manager and kube-scheduler do (their kubeadm liveness probes use it)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            found = self.path.split("?")[0] in ("/healthz", "/livez", "/readyz")
            body = b"ok" if found else b"404 page not found"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("healthz: " + format, *args)

    address, port = str(flags["bind-address"]), int(str(flags["secure-port"]))
    context = _self_signed(component)

    def serve() -> None:
        while True:  # the process this one replaces may hold the port for a moment yet
            try:
                server = ThreadingHTTPServer((address, port), Health)
                break
            except OSError as e:
                log.warning("cannot serve /healthz on %s:%d yet: %s", address, port, e)
                time.sleep(1.0)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        log.info("serving /healthz on https://%s:%d", address, port)
        server.serve_forever()

    threading.Thread(target=serve, name="healthz", daemon=True).start()
