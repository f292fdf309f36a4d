"""The lab: a real multi-host HA control plane on one Linux machine. Nothing in the product imports it.

The public names load lazily: the stand-ins (``kubeha.lab.standins``) run as their own small
processes on every lab host and must not pay for pydantic, cryptography and the renderers.
"""

from importlib import import_module

_PUBLIC = {"Lab": "kubeha.lab.lab", "LabPaths": "kubeha.lab.lab",
           "LabSpec": "kubeha.lab.topology", "LabTopology": "kubeha.lab.topology"}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kubeha.lab' has no attribute {name!r}")
