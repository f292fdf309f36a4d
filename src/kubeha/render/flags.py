"""Changing one flag (or a static pod's annotation) in a control-plane component's file,
leaving every other byte alone.

Operators' manifests and units carry flags kubeha does not render (admission plugins,
audit settings); re-rendering the whole file would drop them, so operations that repoint a
component edit the one flag in place.
"""

from __future__ import annotations

import re

from ruamel.yaml.error import YAMLError

from kubeha.errors import InputError
from kubeha.render._text import dump_yaml, new_yaml


def replace_flag(text: str, flag: str, value: str, source: str = "file", *, add_missing: bool = False) -> str:
    """``text`` with ``--flag=value`` wherever ``--flag=...`` or ``--flag ...`` was (a static
    pod's command list or a unit's ExecStart). A flag that is not there is InputError, or
    with ``add_missing`` added as the first flag: a new item of the command list, or right
    after the program on the ExecStart line."""
    if any(c.isspace() for c in value):
        raise InputError(f"--{flag} value {value!r} holds white space")
    pattern = re.compile(rf"--{re.escape(flag)}(?:=|[ \t]+)[^\s\"'\\]+")
    changed, count = pattern.subn(lambda m: f"--{flag}={value}", text)
    if count:
        return changed
    if add_missing:
        if program := _EXEC_START.search(text):
            return f"{text[:program.end()]} --{flag}={value}{text[program.end():]}"
        if item := _FIRST_FLAG_ITEM.search(text):
            return f"{text[:item.start()]}{item.group(1)}--{flag}={value}\n{text[item.start():]}"
    raise InputError(f"{source} has no --{flag} flag to change")


_EXEC_START = re.compile(r"^ExecStart=[^\s\\]+", re.MULTILINE)
_FIRST_FLAG_ITEM = re.compile(r"^([ \t]*-[ \t]+)[\"']?--", re.MULTILINE)  # a static pod's command list


def with_pod_annotation(text: str, key: str, value: str, source: str = "manifest") -> str:
    """A static pod manifest with ``metadata.annotations[key] = value``, every other byte's
    meaning kept. A changed manifest is what makes the kubelet replace a static pod (as
    `kubectl rollout restart` does for a Deployment with its restartedAt annotation)."""
    try:
        pod = new_yaml().load(text)
        metadata = pod["metadata"]
    except (YAMLError, KeyError, TypeError):
        raise InputError(f"{source}: not a static pod manifest with metadata") from None
    if metadata.get("annotations") is None:
        metadata["annotations"] = {}
    metadata["annotations"][key] = value
    return dump_yaml(pod)


def pod_annotation(text: str, key: str) -> str | None:
    try:
        annotations = (new_yaml().load(text)["metadata"] or {}).get("annotations") or {}
    except (YAMLError, KeyError, TypeError):
        return None
    value = annotations.get(key)
    return None if value is None else str(value)
