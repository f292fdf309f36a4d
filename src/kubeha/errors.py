"""The one error root of kubeha.

Every error a user can hit is a KubehaError whose message is one line saying what is
wrong and what to do. Foreign errors (OSError, asyncssh, httpx, ...) are mapped to these
at the boundary with ``raise ... from e``.
"""


class KubehaError(Exception):
    """Root of every error kubeha raises on purpose."""


class InputError(KubehaError):
    """Bad input (arguments, inventory): refused before any host is touched."""


class HostError(KubehaError):
    """A host could not be reached or a command on it failed."""


class LabError(KubehaError):
    """The lab could not be built, inspected or removed."""


def as_typed(text: str) -> str:
    """What the user typed, for a message: as it is when it is printable, else quoted with
    escapes (a control character in it must not break the message's one line)."""
    return text if text.isprintable() else repr(text)
