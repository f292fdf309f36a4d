"""The lab: a real multi-host HA control plane on one Linux machine. Nothing in the product imports it."""

from kubeha.lab.lab import Lab, LabPaths
from kubeha.lab.topology import LabSpec, LabTopology

__all__ = ["Lab", "LabPaths", "LabSpec", "LabTopology"]
