"""cluster.yaml: read it (every problem with its line), write it (stable, with a header)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from kubeha.errors import InputError
from kubeha.inventory.document import build_inventory, inventory_document
from kubeha.inventory.inventory import Inventory
from kubeha.inventory.problems import Loc, Locator, field_path

HEADER = """\
kubeha inventory: the cluster kubeha manages and how to reach its hosts.
Every field is described in docs/inventory.md. Written by kubeha: comments are not kept."""


def load_inventory(path: Path | str) -> Inventory:
    """Read and check a cluster.yaml; relative SSH key paths are relative to its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the inventory: {e}") from None
    return parse_inventory(text, str(path), base_dir=path.parent)


def parse_inventory(text: str, source: str = "cluster.yaml", *, base_dir: Path | None = None) -> Inventory:
    """Check cluster.yaml text; ``source`` names it in the error lines."""
    data = read_yaml(text, source)
    if not isinstance(data, CommentedMap):
        raise InputError(f"{source}:1: expected a mapping with at least `hosts`, found {_kind(data)}")
    return build_inventory(data, yaml_locator(source, data), base_dir=base_dir)


def read_yaml(text: str, source: str) -> Any:
    """Round-trip YAML (so every node knows its line), or one InputError line."""
    try:
        with warnings.catch_warnings():  # a reused anchor is legal YAML 1.2; ruamel warns anyway
            warnings.simplefilter("ignore")
            return YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{source}{line}: not valid YAML: {_one_line(e.problem or e.context)}") from None
    except (YAMLError, ValueError, RecursionError) as e:  # e.g. an integer too long to convert
        raise InputError(f"{source}: not valid YAML: {_one_line(str(e))}") from None
    except TypeError as e:  # a mapping or list used as a key ("? {a: 1}"): ruamel cannot hash it
        raise InputError(f"{source}: not an inventory: a key is not a plain value ({_one_line(str(e))})") from None


def yaml_locator(source: str, root: CommentedMap) -> Locator:
    """``source:line: field`` for a location: the deepest node of it that the file has."""

    def locate(loc: Loc) -> str:
        node: Any = root
        line = root.lc.line
        for part in loc:
            if isinstance(node, CommentedMap) and _has_key(node, part):
                line = node.lc.key(part)[0]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = node.lc.item(part)[0]
            else:
                break
            node = node[part]
        return f"{source}:{line + 1}: {field_path(loc)}" if loc else f"{source}:{line + 1}"

    return locate


def _has_key(node: CommentedMap, key: object) -> bool:
    try:
        return key in node
    except TypeError:  # an unhashable location part
        return False


def dump_inventory(inventory: Inventory) -> str:
    """cluster.yaml text that loads as ``inventory``; fields in schema order, roles on one line."""
    document = _commented(inventory_document(inventory))
    document.yaml_set_start_comment(HEADER)
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 200
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _commented(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return CommentedMap((k, _commented(v, k)) for k, v in value.items())
    if isinstance(value, list):
        seq = CommentedSeq(_commented(v) for v in value)
        if key == "roles":
            seq.fa.set_flow_style()
        return seq
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else "a list" if isinstance(value, list) else repr(value)[:40]


def _one_line(text: str | None) -> str:
    return " ".join((text or "unknown problem").split())
