"""Keeping secrets out of the journal and out of plans.

A plan is shown to people (change tickets) and stored on disk, so a plan holding anything
that looks like a key is refused: a plan is built by code, and such a plan is a bug in the
operation, not something to quietly rewrite after an operator approved it. Messages come
from errors of hosts and APIs, which kubeha does not control, so they are redacted instead.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

# What a secret looks like in text kubeha handles: PEM private keys, kubeconfig key data and
# tokens, HTTP bearer tokens, and `password=...`-style assignments.
_SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a PEM private key", re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)", re.DOTALL)),
    ("a kubeconfig key or token", re.compile(
        r"(?i)\b(?:client-key-data|token|id-token|refresh-token)\s*[:=]\s*[\"']?[A-Za-z0-9+/=._~-]{8,}")),
    ("a bearer token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9+/=._~-]{8,}")),
    ("a password or secret value", re.compile(
        r"(?i)\b(?:password|passwd|secret|private[_-]?key)\s*[:=]\s*[\"']?[^\s\"',;]{4,}")),
)


def secret_kind(text: str) -> str | None:
    """What kind of secret ``text`` seems to hold, or None."""
    return next((kind for kind, pattern in _SECRET_PATTERNS if pattern.search(text)), None)


def redact(text: str) -> str:
    for _, pattern in _SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def one_line(text: str, limit: int = 500) -> str:
    """``text`` redacted, on one line, cut to ``limit`` characters: what a journal message is."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
