"""Imports point one way: product code never imports the lab (only the CLI's `lab` command does)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "kubeha"
LAB_USERS = {SRC / "cli" / "lab.py"}


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
