"""Polling for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, *,
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """``condition()``'s first truthy value, polled every 100 ms until ``timeout``;
    exceptions of the ``ignore`` types count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def held_for(condition: Callable[[], object], seconds: float) -> Callable[[], bool]:
    """A condition for ``wait_for``: true once ``condition()`` has been true at every poll
    for ``seconds`` (a state that settles through flaps, like VRRP after a link comes back)."""
    since: list[float] = []

    def check() -> bool:
        if not condition():
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= seconds
    return check
