"""Discover a cluster's inventory from one master reachable over SSH."""

from kubeha.discover.discover import discover_inventory

__all__ = ["discover_inventory"]
