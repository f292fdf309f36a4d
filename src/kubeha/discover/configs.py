"""Pure parsers of what a master and a worker run: control-plane flags, keepalived, haproxy, nginx.

Text in, facts out: no I/O, so each is tested without hosts. They read what kubeha renders
and what kubeadm, kubeasz and hand-written configs commonly hold.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from kubeha.errors import InputError
from kubeha.render.ha import Backend

Flags = dict[str, str]

# ---- control-plane commands ----------------------------------------------------------


def parse_flags(argv: Sequence[str]) -> Flags:
    """``--name=value`` and ``--name value`` flags of a command line (a bare ``--name``: "true")."""
    flags: Flags = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i < len(args) and not args[i].startswith("-"):
                value, i = args[i], i + 1
            else:
                value = "true"
        flags[name] = value
    return flags


def manifest_command(text: str, source: str = "manifest") -> list[str]:
    """The command and args of a static pod's first container."""
    try:
        pod = YAML(typ="safe").load(text)
        container = pod["spec"]["containers"][0]
    except (YAMLError, KeyError, IndexError, TypeError):
        raise InputError(f"{source}: not a static pod manifest with a container") from None
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def unit_exec_start(text: str, source: str = "unit") -> list[str]:
    """The last ExecStart of a systemd unit's [Service] section, split into words.

    Backslash-newline continues a line; an empty ``ExecStart=`` resets the list; the
    prefixes ``-@:+!`` are not part of the command.
    """
    joined = re.sub(r"\\\n", " ", text)
    section, command = "", ""
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Service]" and line.startswith("ExecStart="):
            command = line.removeprefix("ExecStart=").strip().lstrip("-@:+!")
    if not command:
        raise InputError(f"{source}: no ExecStart in the [Service] section")
    try:
        return shlex.split(command)
    except ValueError as e:
        raise InputError(f"{source}: ExecStart cannot be split into words: {e}") from None


def kubelet_cluster_domain(text: str) -> str | None:
    """``clusterDomain`` of a KubeletConfiguration, if it sets one."""
    try:
        config = YAML(typ="safe").load(text)
    except YAMLError:
        return None
    domain = config.get("clusterDomain") if isinstance(config, dict) else None
    return str(domain).rstrip(".") if domain else None


# ---- brace-structured configs (keepalived, nginx) -------------------------------------


@dataclass
class Directive:
    words: list[str]
    children: list[Directive] = field(default_factory=list)  # its { } block, if any

    @property
    def keyword(self) -> str:
        return self.words[0] if self.words else ""

    def value(self, keyword: str) -> str | None:
        """The first argument of the first child directive ``keyword``."""
        found = next((c for c in self.children if c.keyword == keyword and len(c.words) > 1), None)
        return found.words[1] if found else None


def parse_blocks(text: str, *, comments: str = "#", statements_end_lines: bool = False) -> list[Directive]:
    """Directives with ``{ }`` blocks: statements end at ``;`` (nginx) or at line ends too
    (keepalived). Quotes group words; comments run to the end of the line."""
    root: list[Directive] = []
    stack = [root]
    words: list[str] = []

    def flush() -> None:
        if words:
            stack[-1].append(Directive(words.copy()))
            words.clear()

    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="{};")
        lexer.commenters = comments
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: take the line's words as they are
            tokens = line.split()
        for token in tokens:
            if token == "{":
                block = Directive(words.copy())
                words.clear()
                stack[-1].append(block)
                stack.append(block.children)
            elif token == "}":
                flush()
                if len(stack) > 1:
                    stack.pop()
            elif token == ";":
                flush()
            else:
                words.append(token)
        if statements_end_lines:
            flush()
    flush()
    return root


def find(directives: Sequence[Directive], keyword: str) -> Iterator[Directive]:
    """Every directive ``keyword``, at any depth."""
    for d in directives:
        if d.keyword == keyword:
            yield d
        yield from find(d.children, keyword)


@dataclass(frozen=True)
class VrrpInstance:
    interface: str | None
    vrid: int | None
    unicast: bool
    addresses: tuple[tuple[IPv4Address, str | None], ...]  # each VIP and its `dev`, if named


def parse_keepalived_conf(text: str) -> tuple[VrrpInstance, ...]:
    instances = []
    for block in find(parse_blocks(text, comments="#!", statements_end_lines=True), "vrrp_instance"):
        addresses = []
        for vips in (c for c in block.children if c.keyword == "virtual_ipaddress"):
            for line in vips.children:
                dev = line.words[line.words.index("dev") + 1] if "dev" in line.words[:-1] else None
                addresses.append((IPv4Interface(line.words[0]).ip, dev))
        vrid = block.value("virtual_router_id")
        instances.append(VrrpInstance(
            interface=block.value("interface"), vrid=int(vrid) if vrid else None,
            unicast=any(c.keyword == "unicast_peer" for c in block.children),
            addresses=tuple(addresses)))
    return tuple(instances)


def _host_port(text: str) -> tuple[str, int] | None:
    """``address:port`` (``*:port``, ``:port``, ``[::]:port``) as (address, port)."""
    host, sep, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else None


@dataclass(frozen=True)
class NodeProxyConfig:
    listen_port: int
    servers: tuple[Backend, ...]


def parse_node_proxy_conf(text: str) -> NodeProxyConfig | None:
    """The nginx stream proxy's listen port and upstream servers; None without a stream proxy."""
    directives = parse_blocks(text)
    for stream in find(directives, "stream"):
        upstreams = {u.words[1]: u for u in find(stream.children, "upstream") if len(u.words) > 1}
        for server in (s for s in stream.children if s.keyword == "server" and s.children):
            listen, target = server.value("listen"), server.value("proxy_pass")
            listen_at = _host_port(listen) if listen else None
            if listen_at is None or target not in upstreams:
                continue
            backends = []
            for entry in upstreams[target].children:
                at = _host_port(entry.words[1]) if entry.keyword == "server" and len(entry.words) > 1 else None
                if at is not None:
                    backends.append(Backend(at[0], at[0], at[1]))
            return NodeProxyConfig(listen_port=listen_at[1], servers=tuple(backends))
    return None


# ---- haproxy ---------------------------------------------------------------------------

_TIME_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _milliseconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text)
    if match is None:
        raise ValueError(f"{text!r} is not an haproxy time")
    return round(int(match.group(1)) * _TIME_UNITS_MS[match.group(2) or "ms"])


@dataclass(frozen=True)
class HaproxyConfig:
    ports: tuple[int, ...]  # bound by the frontends that lead to servers
    servers: tuple[Backend, ...]
    check: dict[str, int]  # of interval_ms, fall, rise: the ones default-server or the servers set


def parse_haproxy_cfg(text: str) -> HaproxyConfig:
    sections: list[tuple[str, str, list[list[str]]]] = []  # (kind, name, lines)
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace() and words[0] in ("global", "defaults", "frontend", "backend", "listen"):
            sections.append((words[0], words[1] if len(words) > 1 else "", []))
        elif sections:
            sections[-1][2].append(words)
    backends = {name: lines for kind, name, lines in sections if kind in ("backend", "listen")}
    ports: list[int] = []
    servers: list[Backend] = []
    check: dict[str, Any] = {}
    for kind, name, lines in sections:
        if kind not in ("frontend", "listen"):
            continue
        target = name if kind == "listen" else next((w[1] for w in lines if w[0] == "default_backend"), None)
        target_lines = backends.get(target or "", [])
        found = [w for w in target_lines if w[0] == "server" and len(w) > 2 and _host_port(w[2])]
        if not found:
            continue
        ports += [at[1] for w in lines if w[0] == "bind" and (at := _host_port(w[1].split(",")[0]))]
        servers += [Backend(w[1], *_host_port(w[2])) for w in found]  # type: ignore[misc]
        for words in [w for w in target_lines if w[0] == "default-server"] + found:
            for key, option in (("interval_ms", "inter"), ("fall", "fall"), ("rise", "rise")):
                if option in words[:-1]:
                    value = words[words.index(option) + 1]
                    check.setdefault(key, _milliseconds(value) if key == "interval_ms" else int(value))
    return HaproxyConfig(ports=tuple(dict.fromkeys(ports)), servers=tuple(servers), check=check)
