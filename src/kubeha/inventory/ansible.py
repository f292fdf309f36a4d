"""Ansible inventories (INI and YAML), as the kubeasz and kubespray importers read them.

Group names are normalised to use ``_`` (``kube-master`` is ``kube_master``): old kubeasz
and kubespray releases spell them with ``-``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.comments import CommentedMap

from kubeha.errors import InputError
from kubeha.inventory.cluster_yaml import read_yaml
from kubeha.inventory.document import build_inventory
from kubeha.inventory.inventory import Inventory
from kubeha.inventory.problems import Loc, mapped_locator
from kubeha.model import HOST_NAME_PATTERN, EtcdTopology, Role

_SSH_VARS = {  # document field in a host's ssh section -> ansible variables, preferred first
    "user": ("ansible_user", "ansible_ssh_user"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "key_file": ("ansible_ssh_private_key_file", "ansible_private_key_file"),
}
_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass
class Group:
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    var_lines: dict[str, int] = field(default_factory=dict)


@dataclass
class AnsibleInventory:
    source: str
    groups: dict[str, Group] = field(default_factory=dict)
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)  # each host's own, in file order
    host_lines: dict[str, int] = field(default_factory=dict)  # where each host is first named

    def group(self, name: str) -> Group:
        return self.groups.setdefault(_group_name(name), Group())

    def add_host(self, group: str, host: str, variables: Mapping[str, Any], line: int) -> None:
        if host not in self.group(group).hosts:
            self.group(group).hosts.append(host)
        self.host_vars.setdefault(host, {}).update(variables)
        self.host_lines.setdefault(host, line)

    def members(self, *groups: str) -> list[str]:
        """The hosts of the groups and of their children, in file order, once each."""
        found: dict[str, None] = {}
        seen: set[str] = set()
        pending = [_group_name(g) for g in groups]
        while pending:
            name = pending.pop(0)
            if name in seen or name not in self.groups:
                continue
            seen.add(name)
            found.update(dict.fromkeys(self.groups[name].hosts))
            pending.extend(self.groups[name].children)
        return list(found)

    def vars_of(self, host: str) -> dict[str, Any]:
        """A host's variables: ``all`` group vars, then every group it is in, then its own."""
        merged = dict(self.groups.get("all", Group()).vars)
        for name in self.groups:
            if name != "all" and host in self.members(name):
                merged.update(self.groups[name].vars)
        merged.update(self.host_vars.get(host, {}))
        return merged

    def var_line(self, group: str, name: str) -> str:
        """``source:line`` where a group variable is set."""
        line = self.groups.get(_group_name(group), Group()).var_lines.get(name)
        return f"{self.source}:{line}" if line else self.source

    def host_place(self, host: str) -> str:
        return f"{self.source}:{self.host_lines[host]}: host {host}"


def _group_name(name: str) -> str:
    return name.replace("-", "_")


def parse_ansible_inventory(text: str, source: str) -> AnsibleInventory:
    """An INI or YAML ansible inventory: YAML when the text is a mapping, else INI."""
    first = next((s for s in (line.strip() for line in text.splitlines()) if s and s[0] not in "#;"), "")
    if not first.startswith("["):
        try:
            data = read_yaml(text, source)
        except InputError:
            data = None
        if isinstance(data, CommentedMap):
            return _parse_yaml(data, source)
    return _parse_ini(text, source)


def _parse_ini(text: str, source: str) -> AnsibleInventory:
    inventory = AnsibleInventory(source)
    problems: list[str] = []
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            header = re.fullmatch(r"\[([^\]:\s]+)(?::(vars|children))?\]", line.split()[0])
            if header is None:
                problems.append(f"{source}:{number}: {line!r} is not a [group], [group:vars] or [group:children] header")
                continue
            group, kind = header.group(1), header.group(2) or "hosts"
            continue
        try:
            if kind == "vars":
                name, value = _ini_var(line)
                inventory.group(group).vars[name] = value
                inventory.group(group).var_lines[name] = number
            elif kind == "children":
                inventory.group(line.split()[0])
                inventory.group(group).children.append(_group_name(line.split()[0]))
            else:
                host, variables = _ini_host(line)
                inventory.add_host(group, host, variables, number)
        except ValueError as e:
            problems.append(f"{source}:{number}: [{group}] {e}")
    if problems:
        raise InputError("\n".join(problems))
    return inventory


def _ini_var(line: str) -> tuple[str, str]:
    name, equals, value = line.partition("=")
    if not equals or not name.strip():
        raise ValueError(f"{line!r} is not a name=value variable")
    value = value.strip()
    if value[:1] in ("'", '"'):
        closing = value.find(value[0], 1)
        if closing < 0:
            raise ValueError(f"{line!r} has an unclosed quote")
        return name.strip(), value[1:closing]
    return name.strip(), re.split(r"\s[#;]", value, maxsplit=1)[0].strip()


def _ini_host(line: str) -> tuple[str, dict[str, str]]:
    try:
        host, *pairs = shlex.split(line, comments=True)
    except ValueError:
        raise ValueError(f"{line!r} has an unclosed quote") from None
    if re.search(r"\[[^\]]*:[^\]]*\]", host):
        raise ValueError(f"{host}: host ranges are not supported: list the hosts one by one")
    variables = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ValueError(f"{host}: {pair!r} is not a name=value variable")
        variables[name] = value
    return host, variables


def _parse_yaml(data: CommentedMap, source: str) -> AnsibleInventory:
    inventory = AnsibleInventory(source)
    problems: list[str] = []

    def visit(name: str, node: Any, line: int) -> None:
        group = inventory.group(name)
        if node is None:
            return
        if not isinstance(node, CommentedMap):
            problems.append(f"{source}:{line}: group {name}: expected a mapping of hosts, vars, children")
            return
        hosts, variables, children = node.get("hosts") or {}, node.get("vars") or {}, node.get("children") or {}
        if not all(isinstance(x, dict) for x in (hosts, variables, children)):
            problems.append(f"{source}:{line}: group {name}: hosts, vars and children must be mappings")
            return
        for host, own in hosts.items():
            host_line = hosts.lc.key(host)[0] + 1
            if own is not None and not isinstance(own, dict):
                problems.append(f"{source}:{host_line}: host {host}: its variables must be a mapping")
                continue
            inventory.add_host(name, str(host), dict(own or {}), host_line)
        for var in variables:
            group.vars[str(var)] = variables[var]
            group.var_lines[str(var)] = variables.lc.key(var)[0] + 1
        for child in children:
            inventory.group(name).children.append(_group_name(str(child)))
            visit(str(child), children[child], children.lc.key(child)[0] + 1)

    for name in data:
        visit(str(name), data[name], data.lc.key(name)[0] + 1)
    if problems:
        raise InputError("\n".join(problems))
    return inventory


def resolve(value: Any, variables: Mapping[str, Any]) -> Any:
    """``value`` with simple ``{{ NAME }}`` references replaced; anything fancier is left as is."""
    for _ in range(10):  # references may nest; a loop stops here
        if not isinstance(value, str) or not _REFERENCE.search(value):
            return value
        value = _REFERENCE.sub(lambda m: str(variables.get(m.group(1), m.group(0))), value)
        if all(m.group(1) not in variables for m in _REFERENCE.finditer(value)):
            return value
    return value


@dataclass
class DocumentDraft:
    """A cluster.yaml document being built from an ansible inventory, and where each part came from."""

    inventory: AnsibleInventory
    variables: dict[str, Any]  # the cluster-wide variables, references resolved
    var_places: dict[str, str]  # where each variable is set
    data: dict[str, Any] = field(default_factory=dict)
    places: dict[Loc, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        inventory: AnsibleInventory,
        groups: Sequence[str],
        defaults: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        extra_source: str = "group_vars",
    ) -> DocumentDraft:
        """Variables from the tool's ``defaults``, then the ``groups``' vars, then ``extra``."""
        variables = dict(defaults or {})
        places = {name: f"{inventory.source}: the default of {name}" for name in variables}
        for group in groups:
            for name, value in inventory.group(group).vars.items():
                variables[name], places[name] = value, f"{inventory.var_line(group, name)}: {name}"
        for name, value in (extra or {}).items():
            variables[name], places[name] = value, f"{extra_source}: {name}"
        resolved = {name: resolve(value, variables) for name, value in variables.items()}
        return cls(inventory, resolved, places)

    def set(self, key: str, value: Any, place: str) -> None:
        self.data[key] = value
        self.places[(key,)] = place

    def use(self, key: str, var: str, convert: Callable[[Any], Any] = lambda value: value) -> None:
        """The document's ``key`` from the variable ``var``, when it is set."""
        if var in self.variables:
            self.set(key, convert(self.variables[var]), self.var_places[var])

    def add_hosts(self, group_roles: Iterable[tuple[tuple[str, ...], Role]], name_var: str | None = None) -> None:
        """Hosts of the role groups (each given by its names, old and new) with their address and SSH."""
        roles: dict[str, list[Role]] = {}
        for groups, role in group_roles:
            for host in self.inventory.members(*groups):
                roles.setdefault(host, []).append(role)
        hosts = []
        for i, (host, host_roles) in enumerate(roles.items()):
            own = self.inventory.vars_of(host)
            variables = {name: resolve(value, {**self.variables, **own}) for name, value in own.items()}
            address = next((variables[v] for v in ("ip", "access_ip", "ansible_host") if v in variables), host)
            node_name = str((variables.get(name_var) if name_var else None) or host)
            hosts.append({
                "name": host_name(node_name),
                "address": address,
                "roles": [r.value for r in host_roles],
                "ssh": _ssh(variables),
            })
            if hosts[-1]["name"] != node_name:
                hosts[-1]["node_name"] = node_name
            self.places[("hosts", i)] = self.inventory.host_place(host)
        self.data["hosts"] = hosts
        etcd = [h for h in hosts if Role.ETCD.value in h["roles"]]
        stacked = all(Role.MASTER.value in h["roles"] for h in etcd)
        self.data["etcd_topology"] = (EtcdTopology.STACKED if stacked else EtcdTopology.EXTERNAL).value

    def set_ssh_defaults(self) -> None:
        ssh = _ssh(self.variables)
        if "ansible_become" in self.variables:
            ssh["sudo"] = self.variables["ansible_become"]
        self.set("ssh", ssh, f"{self.inventory.source}: the ansible_* connection variables")

    def build(self) -> Inventory:
        return build_inventory(self.data, mapped_locator(self.inventory.source, self.places), notes=self.notes)


def host_name(node_name: str) -> str:
    """A host name kubeha accepts for a node: the node name itself, else its DNS-label form."""
    if re.fullmatch(HOST_NAME_PATTERN, node_name):
        return node_name
    return re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")[:63].strip("-") or "host"


def _ssh(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The ssh section for ansible connection variables (the preferred name wins)."""
    return {key: variables[v] for key, names in _SSH_VARS.items() for v in reversed(names) if v in variables}
