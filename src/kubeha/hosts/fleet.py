"""Connections to many hosts, driven in parallel with a bound.

A host that fails (to connect, or in an action) gets its error in its outcome; the other
hosts carry on. Errors that are not HostErrors are bugs: they are raised once every host
has finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kubeha.errors import HostError
from kubeha.hosts.connection import Command, HostConnection, OpenedWhileUsed, SshSettings
from kubeha.model import Host

T = TypeVar("T")
HostAction = Callable[[HostConnection], Awaitable[T]]


@dataclass(frozen=True)
class HostOutcome(Generic[T]):
    host: str
    value: T | None = None
    error: HostError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Fleet(OpenedWhileUsed):
    """``async with Fleet(hosts, settings) as fleet:`` opens a connection to every host."""

    def __init__(self, hosts: Iterable[Host], settings: SshSettings) -> None:
        self.hosts = tuple(hosts)
        self._limit = asyncio.Semaphore(settings.max_parallel)
        self._connections = {h.name: HostConnection(h, settings) for h in self.hosts}
        self.connect_errors: dict[str, HostError] = {}

    async def open(self) -> None:
        try:
            outcomes = await self._each(self._connections.values(), HostConnection.open)
        except BaseException:
            await self.close()  # a bug or a cancel: do not leave the opened ones behind
            raise
        self.connect_errors = {o.host: o.error for o in outcomes if o.error is not None}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections.values()))

    def __getitem__(self, host_name: str) -> HostConnection:
        """The host's open connection; its connect error if it has none."""
        if host_name in self.connect_errors:
            raise self.connect_errors[host_name]
        return self._connections[host_name]

    @property
    def connected(self) -> tuple[HostConnection, ...]:
        return tuple(c for name, c in self._connections.items() if name not in self.connect_errors)

    async def run_all(self, action: Command | HostAction[T]) -> dict[str, HostOutcome[T]]:
        """Run a command (checked) or ``await action(conn)`` on every host, in parallel.

        A host that could not connect gets its connect error as its outcome.
        """
        act = action if callable(action) else lambda conn: conn.run(action)
        outcomes = await self._each(self.connected, act)
        by_host = {o.host: o for o in outcomes}
        by_host.update((name, HostOutcome(name, error=e)) for name, e in self.connect_errors.items())
        return {h.name: by_host[h.name] for h in self.hosts}

    async def _each(self, connections: Iterable[HostConnection],
                    act: HostAction[T]) -> list[HostOutcome[T]]:
        async def one(conn: HostConnection) -> HostOutcome[T]:
            async with self._limit:
                try:
                    return HostOutcome(conn.name, value=await act(conn))
                except HostError as e:
                    return HostOutcome(conn.name, error=e)

        results = await asyncio.gather(*(one(c) for c in connections), return_exceptions=True)
        bugs = [r for r in results if isinstance(r, BaseException)]
        if bugs:
            raise bugs[0]
        return results
