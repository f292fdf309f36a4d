"""Problems found in an inventory source, and the one InputError that lists them all.

A problem is tied to a location in the cluster.yaml document (``("hosts", 2, "address")``);
a Locator turns that location into where the user should look: ``cluster.yaml:12:
hosts[2].address`` for a YAML file, ``hosts:7: [kube_master] 10.0.0.1`` for an import.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kubeha.errors import InputError

Loc = tuple[str | int, ...]
Locator = Callable[[Loc], str]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str


def field_path(loc: Loc) -> str:
    """``("hosts", 2, "address")`` -> ``hosts[2].address``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def refusal(problems: Iterable[Problem], locate: Locator) -> InputError:
    return InputError("\n".join(f"{locate(p.loc)}: {p.message}" for p in problems))


def mapped_locator(source: str, places: Mapping[Loc, str]) -> Locator:
    """Locates by the longest known prefix of a location, else names the source and field."""

    def locate(loc: Loc) -> str:
        for end in range(len(loc), 0, -1):
            if loc[:end] in places:
                return places[loc[:end]]
        return f"{source}: {field_path(loc)}" if loc else source

    return locate


def shown(value: Any) -> str:
    """A value as a message quotes it: short, on one line."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(int(value)) if value.bit_length() < 64 else "a huge number"
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, str):
        text = repr(str(value))
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _known_fields(root: type[BaseModel], loc: Loc) -> list[str]:
    """The field names allowed at ``loc`` (the location of an unknown field)."""
    annotation: Any = root
    for part in loc[:-1]:
        model = _model_in(annotation)
        if isinstance(part, str) and model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
    model = _model_in(annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list, tuple):
        for arg in get_args(annotation):
            if (model := _model_in(arg)) is not None:
                return model
    return None


def _describe(error: ErrorDetails, root: type[BaseModel], pattern_words: Mapping[str, str]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx", {})
    given = shown(value)
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"is not a known field (expected one of: {', '.join(_known_fields(root, error['loc']))})"
    if kind == "ip_v4_address":
        return f"{given} is not an IPv4 address"
    if kind == "ip_v4_network":
        return f"{given} is not an IPv4 network like 10.0.0.0/24 (no host bits set)"
    if kind == "enum":
        return f"{given} is not one of {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return f"{given} is not {pattern_words.get(ctx['pattern'], 'of the form ' + ctx['pattern'])}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{given} is out of range: the least allowed is {ctx.get('ge', ctx.get('gt'))}"
    if kind in ("less_than_equal", "less_than"):
        return f"{given} is out of range: the most allowed is {ctx.get('le', ctx.get('lt'))}"
    if kind.startswith("int_"):
        return f"{given} is not a whole number"
    if kind.startswith("bool_"):
        return f"{given} is not true or false"
    if kind in ("string_type", "string_too_short", "path_type"):
        return f"{given} is not a non-empty string"
    if kind in ("list_type", "tuple_type"):
        return f"{given} is not a list"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{given} is not a mapping"
    if kind == "recursion_loop":
        return "refers to itself"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{given}: {error['msg']}"


def validation_problems(
    error: ValidationError, root: type[BaseModel], pattern_words: Mapping[str, str]
) -> list[Problem]:
    """One problem per pydantic error; ``pattern_words`` says in words what a pattern wants."""
    return [Problem(tuple(e["loc"]), _describe(e, root, pattern_words)) for e in error.errors()]
