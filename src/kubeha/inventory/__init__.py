"""The inventory: cluster.yaml, and importers from kubeasz and kubespray inventories."""

from kubeha.inventory.cluster_yaml import dump_inventory, load_inventory, parse_inventory
from kubeha.inventory.document import cluster_inconsistencies
from kubeha.inventory.inventory import Inventory, SshDefaults
from kubeha.inventory.kubeasz import import_kubeasz
from kubeha.inventory.kubespray import import_kubespray

__all__ = [
    "Inventory", "SshDefaults", "cluster_inconsistencies", "dump_inventory", "import_kubeasz", "import_kubespray",
    "load_inventory", "parse_inventory",
]
