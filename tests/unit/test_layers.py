"""Imports point one way: product code never imports the lab (only the CLI's `lab` command does)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "kubeha"
LAB_USERS = {SRC / "cli" / "lab.py", SRC / "cli" / "demo.py"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_product_code_never_imports_the_lab():
    offenders = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in SRC.rglob("*.py")
        if SRC / "lab" not in path.parents and path not in LAB_USERS
        for module in imported_modules(path)
        if module == "kubeha.lab" or module.startswith("kubeha.lab.")
    ]
    assert offenders == []


# Top to bottom, as docs/architecture.md lists them: a package imports only packages below it.
LAYERS = ["cli", "lab", "operations", "report", "plan", "probe", "checks", "lb", "discover", "certs", "access", "kube",
          "etcd", "hosts", "inventory", "render", "pki", "model", "errors"]


def test_packages_import_only_downward():
    offenders = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        if top not in LAYERS:
            continue
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] != "kubeha" or len(parts) < 2 or parts[1] not in LAYERS or parts[1] == top:
                continue
            if LAYERS.index(parts[1]) < LAYERS.index(top) and path not in LAB_USERS:
                offenders.append(f"{path.relative_to(SRC)} imports {module}")
    assert offenders == []


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert packages - {"__main__"} <= set(LAYERS), packages - set(LAYERS)
