"""What every renderer shares: the package's Jinja templates and a YAML dumper."""

from __future__ import annotations

import io
from typing import Any

import jinja2
from ruamel.yaml import YAML

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("kubeha.render", "templates"),
    undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty string
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def render_template(name: str, **values: Any) -> str:
    return _TEMPLATES.get_template(name).render(**values)


def new_yaml() -> YAML:
    """A round-trip YAML (keeps comments, order and quotes) writing kubeadm/kubectl style."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold long flag values or base64 data
    return yaml


def dump_yaml(data: Any) -> str:
    out = io.StringIO()
    new_yaml().dump(data, out)
    return out.getvalue()
