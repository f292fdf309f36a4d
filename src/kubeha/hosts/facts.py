"""Facts about a host: each a command and a pure parser of its output.

Parsers take the command's stdout and nothing else, so they are tested without hosts.
A fact lists the exit statuses that still carry an answer (``systemctl is-active``
exits 3 when a unit is not active); any other status is a failure.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import PurePosixPath
from typing import Generic, TypeVar

from kubeha.hosts.connection import HostConnection
from kubeha.hosts.errors import CommandFailed

T = TypeVar("T")

_SYSTEMCTL_NOT_ACTIVE = 3


@dataclass(frozen=True)
class Fact(Generic[T]):
    name: str
    command: str
    parse: Callable[[str], T]
    answer_statuses: frozenset[int] = frozenset({0})


@dataclass(frozen=True)
class InterfaceAddress:
    interface: str
    address: IPv4Interface  # address with its prefix length


def parse_hostname(stdout: str) -> str:
    return stdout.strip()


def parse_ipv4_addresses(stdout: str) -> tuple[InterfaceAddress, ...]:
    """Parse ``ip -4 -o addr show``: ``2: eth0    inet 10.0.0.2/24 brd ... scope global eth0``."""
    found = []
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet":
            found.append(InterfaceAddress(interface=words[1].split("@")[0],
                                          address=IPv4Interface(words[3])))
    return tuple(found)


def parse_unit_states(units: tuple[str, ...], stdout: str) -> dict[str, str]:
    """Pair ``systemctl is-active U...``'s one state per line with the units asked about."""
    states = stdout.split()
    if len(states) != len(units):
        raise ValueError(f"systemctl gave {len(states)} states for {len(units)} units")
    return dict(zip(units, states))


def parse_sha256(stdout: str) -> str | None:
    """The digest from ``sha256sum``'s output; None for no output (no such file)."""
    words = stdout.split()
    return words[0] if words else None


HOSTNAME: Fact[str] = Fact("hostname", "uname -n", parse_hostname)
IPV4_ADDRESSES: Fact[tuple[InterfaceAddress, ...]] = Fact(
    "IPv4 addresses", "ip -4 -o addr show", parse_ipv4_addresses)


def ipv4_addresses_on(interface: str) -> Fact[tuple[InterfaceAddress, ...]]:
    """The IPv4 addresses of one interface: where a VIP shows up."""
    return Fact(f"IPv4 addresses on {interface}", f"ip -4 -o addr show dev {shlex.quote(interface)}",
                parse_ipv4_addresses)


def holds_address(addresses: Iterable[InterfaceAddress], address: IPv4Address) -> bool:
    return any(a.address.ip == address for a in addresses)


def unit_states(*units: str) -> Fact[dict[str, str]]:
    """Each unit's state: active, inactive, failed, activating, ..."""
    return Fact(f"states of {', '.join(units)}",
                shlex.join(["systemctl", "is-active", *units]),
                lambda stdout: parse_unit_states(units, stdout),
                frozenset({0, _SYSTEMCTL_NOT_ACTIVE}))


def file_sha256(path: str | PurePosixPath) -> Fact[str | None]:
    """The file's SHA-256 in hex, or None if there is no such file."""
    quoted = shlex.quote(str(path))
    return Fact(f"SHA-256 of {path}", f"[ ! -e {quoted} ] || sha256sum -- {quoted}", parse_sha256)


async def gather_fact(conn: HostConnection, fact: Fact[T]) -> T:
    result = await conn.run(fact.command, check=False)
    if result.exit_status not in fact.answer_statuses:
        raise CommandFailed(conn.name, f"finding the {fact.name}", result.exit_status, result.stderr)
    return fact.parse(result.stdout)
