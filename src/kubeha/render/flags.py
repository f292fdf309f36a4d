"""Changing one flag in a control-plane component's file, leaving every other byte alone.

Operators' manifests and units carry flags kubeha does not render (admission plugins,
audit settings); re-rendering the whole file would drop them, so operations that repoint a
component edit the one flag in place.
"""

from __future__ import annotations

import re

from kubeha.errors import InputError


def replace_flag(text: str, flag: str, value: str, source: str = "file") -> str:
    """``text`` with ``--flag=value`` wherever ``--flag=...`` or ``--flag ...`` was (a static
    pod's command list or a unit's ExecStart); InputError when the flag is not there."""
    if any(c.isspace() for c in value):
        raise InputError(f"--{flag} value {value!r} holds white space")
    pattern = re.compile(rf"--{re.escape(flag)}(?:=|[ \t]+)[^\s\"'\\]+")
    changed, count = pattern.subn(lambda m: f"--{flag}={value}", text)
    if count == 0:
        raise InputError(f"{source} has no --{flag} flag to change")
    return changed
