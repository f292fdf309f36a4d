"""What `kubeha check` reads on a host: facts (command + pure parser), run as one script.

Every fact of a host goes into one shell script, so gathering a host costs one SSH round
trip. The script frames each fact's stdout between marker lines with its exit status and
last stderr line; ``parse_sections`` splits that apart again. Parsers take the stdout and
nothing else, so they are tested without hosts.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from cryptography import x509

from kubeha.errors import KubehaError
from kubeha.hosts import Fact, HostConnection
from kubeha.pki import SubjectAltNames, sans_of

T = TypeVar("T")

_BEGIN = "##kubeha-fact> "
_END = "##kubeha-fact< "
_SECTION = re.compile(rf"^{_BEGIN}([^\n]+)\n(.*?)\n{_END}(\d+) ?([^\n]*)$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Section:
    """One fact's raw output inside the combined script."""

    exit_status: int
    stdout: str
    stderr_tail: str


class FactFailed(Exception):
    """A fact's command failed or its output did not parse; the message says which and why."""


def combined_script(facts: Mapping[str, Fact[Any]]) -> str:
    """One POSIX sh script running every fact's command in a subshell, framed by markers."""
    lines = ['e=$(mktemp) || exit 1', "trap 'rm -f -- \"$e\"' EXIT"]
    for key, fact in facts.items():
        lines += [f"printf '%s\\n' {shlex.quote(_BEGIN + key)}",
                  f"( {fact.command}\n) 2>\"$e\" </dev/null",
                  f"printf '\\n%s%s %s\\n' {shlex.quote(_END)} \"$?\" \"$(tail -n 1 -- \"$e\")\""]
    return "\n".join(lines) + "\n"


def parse_sections(stdout: str) -> dict[str, Section]:
    return {m.group(1): Section(int(m.group(3)), m.group(2), m.group(4).strip())
            for m in _SECTION.finditer(stdout)}


def fact_value(fact: Fact[Any], section: Section | None) -> Any:
    """The fact's parsed value; FactFailed if it did not run, failed or did not parse."""
    if section is None:
        raise FactFailed(f"finding the {fact.name} gave no output")
    if section.exit_status not in fact.answer_statuses:
        detail = f": {section.stderr_tail}" if section.stderr_tail else ""
        raise FactFailed(f"finding the {fact.name} failed with exit status {section.exit_status}{detail}")
    try:
        return fact.parse(section.stdout)
    except (KubehaError, ValueError, KeyError, IndexError, TypeError) as e:
        raise FactFailed(f"the {fact.name} cannot be parsed: {e}") from None


async def gather_facts(conn: HostConnection, facts: Mapping[str, Fact[Any]]) -> dict[str, Any]:
    """Each fact's value, or the FactFailed saying why it has none; one SSH round trip."""
    sections = parse_sections((await conn.run(["sh", "-c", combined_script(facts)])).stdout)
    values: dict[str, Any] = {}
    for key, fact in facts.items():
        try:
            values[key] = fact_value(fact, sections.get(key))
        except FactFailed as e:
            values[key] = e
    return values


# ---- facts and their parsers ----------------------------------------------------------


_PRESENT = "+"  # printed before a file's content: an empty file is not a missing one


def parse_present_text(stdout: str) -> str | None:
    return stdout[len(_PRESENT):] if stdout.startswith(_PRESENT) else None


def file_text(path: str | PurePosixPath) -> Fact[str | None]:
    """A file's text; None when there is no such file."""
    quoted = shlex.quote(str(path))
    return Fact(f"content of {path}", f"[ -e {quoted} ] || exit 0; printf '{_PRESENT}'; cat -- {quoted}",
                parse_present_text)


def parsed_file(path: str | PurePosixPath, parse: Callable[[str], T]) -> Fact[T | None]:
    """A file parsed by ``parse``; None when there is no such file."""
    read = file_text(path)

    def parse_if_present(stdout: str) -> T | None:
        text = parse_present_text(stdout)
        return None if text is None else parse(text)

    return Fact(f"{path}", read.command, parse_if_present)


def parse_uid(stdout: str) -> int:
    return int(stdout.strip())


UID: Fact[int] = Fact("user id", "id -u", parse_uid)


@dataclass(frozen=True)
class DiskSpace:
    mount_point: str
    size_bytes: int
    free_bytes: int

    @property
    def free_fraction(self) -> float:
        return self.free_bytes / self.size_bytes if self.size_bytes else 0.0


def parse_df(stdout: str) -> DiskSpace:
    """``df -P -k PATH``: a header, then ``fs 1024-blocks used available capacity mount``."""
    lines = stdout.strip().splitlines()
    if len(lines) < 2:
        raise ValueError("df printed no file system")
    words = lines[-1].split()
    if len(words) < 6:
        raise ValueError(f"unexpected df line {lines[-1]!r}")
    return DiskSpace(mount_point=words[5], size_bytes=int(words[1]) * 1024, free_bytes=int(words[3]) * 1024)


def disk_space(path: str | PurePosixPath) -> Fact[DiskSpace]:
    """Space on the file system holding ``path`` (or its nearest existing parent)."""
    quoted = shlex.quote(str(path))
    return Fact(f"free space for {path}",
                f"p={quoted}; while [ ! -e \"$p\" ]; do p=$(dirname -- \"$p\"); done; df -P -k -- \"$p\"",
                parse_df)


@dataclass(frozen=True)
class FstabLine:
    number: int
    text: str


def parse_fstab_bad_lines(stdout: str) -> tuple[FstabLine, ...]:
    """Lines of /etc/fstab with fewer than the 4 fields mount needs (device, mount point,
    type, options); comments and blank lines are fine."""
    return tuple(FstabLine(n, line.strip()) for n, line in enumerate(stdout.splitlines(), 1)
                 if line.strip() and not line.lstrip().startswith("#") and len(line.split()) < 4)


FSTAB_BAD_LINES: Fact[tuple[FstabLine, ...]] = Fact(
    "lines of /etc/fstab", "[ -e /etc/fstab ] || exit 0; cat /etc/fstab", parse_fstab_bad_lines)


@dataclass(frozen=True)
class CertFile:
    path: str
    not_after: dt.datetime | None  # None: the file holds no certificate cryptography can read
    sans: SubjectAltNames


_CERT_FILE = "==> "


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def parse_cert_files(stdout: str) -> tuple[CertFile, ...]:
    """``==> PATH`` lines, each followed by the PEM certificates of that file (the first is
    its own certificate: a chain lists the leaf first)."""
    found = []
    for chunk in stdout.split(_CERT_FILE)[1:]:
        path, _, text = chunk.partition("\n")
        pem = _PEM_CERT.search(text)
        try:
            cert = x509.load_pem_x509_certificate(pem.group(0).encode()) if pem else None
        except ValueError:
            cert = None
        if cert is None:
            found.append(CertFile(path, None, SubjectAltNames()))
        else:
            found.append(CertFile(path, cert.not_valid_after_utc, sans_of(pem.group(0).encode())))
    return tuple(found)


def cert_files(*directories: str | PurePosixPath) -> Fact[tuple[CertFile, ...]]:
    """Every certificate in ``*.crt``/``*.pem`` files under the directories: only the
    certificate blocks leave the host, never a key (not even one sharing a file)."""
    dirs = " ".join(shlex.quote(str(d)) for d in dict.fromkeys(directories))
    script = (f"for d in {dirs}; do [ -d \"$d\" ] && find \"$d\" -type f \\( -name '*.crt' -o -name '*.pem' \\); "
              f"done | sort -u | while read -r f; do grep -q -e '-BEGIN CERTIFICATE-' -- \"$f\" || continue; "
              f"printf '{_CERT_FILE}%s\\n' \"$f\"; sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/p' -- \"$f\"; done")
    return Fact("certificates", script, parse_cert_files)


@dataclass(frozen=True)
class Readiness:
    """What ``GET /readyz`` got: ready is HTTP 200 with body ok."""

    ready: bool
    detail: str  # "ok", "HTTP 500: [-]etcd failed: ...", "connection refused"


_CURL_ERRORS = {6: "cannot resolve the host", 7: "connection refused", 28: "timed out",
                35: "TLS handshake failed", 52: "empty reply", 56: "connection reset"}


def parse_curl_readyz(stdout: str) -> Readiness:
    """``curl -sk -w '\\n%{http_code} %{exitcode}'``: the body, then the HTTP code and curl's exit code."""
    body, _, last = stdout.rpartition("\n")
    code, exit_code = (last.split() + ["0", "0"])[:2]
    if exit_code != "0":
        return Readiness(False, _CURL_ERRORS.get(int(exit_code), f"curl failed with exit code {exit_code}"))
    return readiness(int(code), body)


def readiness(status_code: int, body: str) -> Readiness:
    if status_code == 200 and body.strip() == "ok":
        return Readiness(True, "ok")
    failing = [line.strip() for line in body.splitlines() if line.startswith("[-]")]
    first = (failing or body.strip().splitlines() or [""])[0][:120]
    return Readiness(False, f"HTTP {status_code}" + (f": {first}" if first else ""))


def parse_proxy_readyz(stdout: str) -> Readiness | None:
    return parse_curl_readyz(stdout) if stdout else None


def readyz_through(port: int, proxy_conf: str | PurePosixPath) -> Fact[Readiness | None]:
    """``/readyz`` through the proxy on this host's 127.0.0.1:``port``, asked on the host
    with curl (anonymous, as keepalived's check does); None where the proxy's config
    ``proxy_conf`` does not exist."""
    conf = shlex.quote(str(proxy_conf))
    return Fact(f"readiness through 127.0.0.1:{port}",
                f"[ -e {conf} ] || exit 0; curl -sk --max-time 3 -w '\\n%{{http_code}} %{{exitcode}}' "
                f"https://127.0.0.1:{port}/readyz; exit 0",
                parse_proxy_readyz)
