"""Bad input, generated: inventories (cluster.yaml, kubeasz and kubespray files) and the
arguments of the commands, each run through the `kubeha` typer app in-process.

Every case ends in one of three ways, and the test fails on anything else:

- refused: a KubehaError or a usage error of the command line, said in one line (an
  inventory's refusal: one line per problem, each naming the file), no traceback, and no
  host touched;
- done without a host (an import, `inventory show`);
- on to the hosts: the input passed every check that needs no host, and the first thing the
  command did next was to connect; the connection layer (``HostConnection.open``, and any
  socket) is stubbed to stop it there. Where the right answer is easy to tell, an oracle
  written here checks that such input is good.

docs/reliability.md's table of bad input is this module's counts: `KUBEHA_WRITE_DOCS=1
pytest tests/unit/test_bad_input.py` writes it; otherwise the test fails when the file says
anything else. Generation is derandomized, so the counts are the same on every run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytest
import typer
import typer.testing
from helpers.doc_tables import assert_doc_table
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_inventory import CLUSTER_YAML, mutated
from test_inventory_import import KUBEASZ_1, KUBEASZ_3, KUBESPRAY_INI, KUBESPRAY_YAML
from typer.testing import CliRunner

from kubeha.cli.main import app
from kubeha.errors import KubehaError
from kubeha.hosts.connection import HostConnection
from kubeha.inventory import parse_inventory
from kubeha.operations.restart_plan import rolling_restart_plan
from kubeha.plan import inventory_digest, plan_json

COMMAND = typer.main.get_command(app)
RELIABILITY_MD = Path(__file__).parents[2] / "docs" / "reliability.md"

# the cluster the arguments are tried on: 3 stacked masters, 3 spares, a worker, a VIP
GOOD_YAML = """\
name: fuzz
network: 10.0.0.0/24
vip:
  address: 10.0.0.100
  port: 8443
  vrid: 51
hosts:
  - {name: m1, address: 10.0.0.11, roles: [etcd, master]}
  - {name: m2, address: 10.0.0.12, roles: [etcd, master]}
  - {name: m3, address: 10.0.0.13, roles: [etcd, master]}
  - {name: s1, address: 10.0.0.21, roles: []}
  - {name: s2, address: 10.0.0.22, roles: []}
  - {name: s3, address: 10.0.0.23, roles: []}
  - {name: w1, address: 10.0.0.31, roles: [worker]}
"""
GOOD = parse_inventory(GOOD_YAML).cluster
MASTERS = {h.name for h in GOOD.masters}
NAMES = [h.name for h in GOOD.hosts]
GROUP_VARS = """\
loadbalancer_apiserver:
  address: 10.3.0.100
  port: 8383
kube_apiserver_port: 6443
kube_version: 1.29.3
kube_service_addresses: 10.233.0.0/18
"""


class HostTouched(BaseException):
    """Raised where kubeha would reach a host: the end of a case whose input passed."""


REFUSED, NO_HOST, TO_HOSTS = "refused", "done without a host", "on to the hosts"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    good: bool | None = None  # the oracle's word, where it has one
    files: tuple[tuple[str, str], ...] = ()  # (name, text) written beside the inventory


@pytest.fixture(scope="module")
def guard() -> Iterator[list[str]]:
    with stubbed_hosts() as touched:
        yield touched


@contextlib.contextmanager
def stubbed_hosts() -> Iterator[list[str]]:
    """Every way to a host stubbed, each attempt listed: the SSH connection layer, and
    sockets (the etcd and API clients, the reachability probe). Names resolve only when they
    are addresses already."""
    touched: list[str] = []
    real_resolve = socket.gethostbyname

    def stop(what: str) -> None:
        touched.append(what)
        raise HostTouched(what)

    async def open_connection(self: HostConnection) -> None:
        stop(f"ssh {self.host.name}")

    def resolve(name: str) -> str:
        try:
            socket.inet_aton(name)
        except OSError:  # a name, not an address: the network would be asked
            raise socket.gaierror(socket.EAI_NONAME, "no resolver in these tests") from None
        except (TypeError, ValueError):  # refused as the real one refuses it, without the network
            pass
        return real_resolve(name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HostConnection, "open", open_connection)
        patch.setattr(socket.socket, "connect", lambda self, address: stop(f"connect {address}"))
        patch.setattr(socket.socket, "connect_ex", lambda self, address: stop(f"connect {address}"))
        patch.setattr(socket, "gethostbyname", resolve)
        yield touched


def run_case(case: Case, directory: Path, touched: list[str]) -> tuple[str, str]:
    """One case through the typer app: its outcome and what the command said (its error, or
    its output); AssertionError saying what went wrong."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.yaml").write_text(GOOD_YAML)
    for name, text in case.files:
        (directory / name).write_text(text, encoding="utf-8")
    args = [arg.replace("{dir}", str(directory)) for arg in case.args]
    before = len(touched)
    try:
        with mock.patch.object(typer.testing, "_get_command", return_value=COMMAND):  # built once, not per case
            result = CliRunner().invoke(app, args, standalone_mode=False)
    except HostTouched:
        assert case.good is not False, f"{args}: bad input went on to {touched[-1]}"
        return TO_HOSTS, touched[-1]
    assert len(touched) == before, f"{args}: a host was touched and the stop swallowed: {touched[before:]}"
    assert "Traceback" not in result.output, f"{args}: {result.output}"
    error = result.exception
    if error is None:
        assert result.return_value in (None, 0), f"{args}: exit {result.return_value}: {result.output}"
        assert case.good is not False, f"{args}: bad input accepted: {result.output}"
        return NO_HOST, result.output
    if isinstance(error, typer.TyperException):  # the command line's own: a usage error
        message = error.format_message()
    else:
        assert isinstance(error, KubehaError), f"{args}: {type(error).__name__}: {error}"
        message = str(error)
    lines = message.splitlines()
    assert lines and all(line.strip() for line in lines), f"{args}: {message!r}"
    if len(lines) > 1:  # an inventory's refusal: one problem a line, each naming its file
        source = lines[0].split(":")[0]
        assert all(line.startswith(source + ":") for line in lines), f"{args}: {message!r}"
    assert case.good is not True, f"{args}: good input refused: {message}"
    return REFUSED, message


# ---- the cases --------------------------------------------------------------------------------

_NOISE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_NAME = st.one_of(st.sampled_from([*NAMES, "ghost", "M1", "m1 ", " s1", "", "m1,s1", "=", "s1=m1"]), _NOISE)
_INVENTORY_COMMANDS = (("check",), ("inventory", "show"), ("lb", "apply", "--dry-run"),
                       ("plan", "rolling-restart"), ("probe", "--duration", "1s"))


def _with_inventory(*command: str, argument: str | None = None) -> tuple[str, ...]:
    """``command`` on the good inventory, with a journal of the case's own; ``argument``
    last, after ``--`` (it may start with a dash)."""
    return (*command, "-i", "{dir}/cluster.yaml", "--journal", "{dir}/journal.sqlite",
            *(("--", argument) if argument is not None else ()))


@st.composite
def inventory_cases(draw) -> Case:
    text = draw(st.one_of(mutated(CLUSTER_YAML), mutated(GOOD_YAML)))
    command = draw(st.sampled_from(_INVENTORY_COMMANDS))
    journal = ("--journal", "{dir}/journal.sqlite") if command[0] == "plan" else ()
    return Case((*command, "-i", "{dir}/mutated.yaml", *journal), files=(("mutated.yaml", text),))


@st.composite
def import_cases(draw) -> Case:
    kind, text = draw(st.sampled_from([("kubeasz", KUBEASZ_3), ("kubeasz", KUBEASZ_1),
                                       ("kubespray", KUBESPRAY_INI), ("kubespray", KUBESPRAY_YAML)]))
    return Case(("inventory", "import", kind, "{dir}/hosts"), files=(("hosts", draw(mutated(text))),))


@st.composite
def group_vars_cases(draw) -> Case:
    return Case(("inventory", "import", "kubespray", "{dir}/inventory.ini", "--group-vars", "{dir}/all.yml"),
                files=(("inventory.ini", KUBESPRAY_INI), ("all.yml", draw(mutated(GROUP_VARS)))))


def _pairs_good(text: str, old_ok: Callable[[str], bool], new_ok: Callable[[str], bool]) -> bool:
    pairs = [[side.strip() for side in item.split("=")] for item in text.split(",")]
    names = [name for pair in pairs for name in pair]
    return (all(len(pair) == 2 and all(pair) for pair in pairs) and len(names) == len(set(names))
            and all(old_ok(old) and new_ok(new) for old, new in pairs))


def _is(role: str) -> Callable[[str], bool]:
    return lambda name: name in NAMES and GOOD.host(name).has(role)


def _not(role: str) -> Callable[[str], bool]:
    return lambda name: name in NAMES and not GOOD.host(name).has(role)


@st.composite
def replace_cases(draw) -> Case:
    # plausible pairs (a master for a spare, a name maybe twice) as often as mangled ones
    plausible = st.tuples(st.sampled_from(sorted(MASTERS)), st.just("="), st.sampled_from(["s1", "s2", "s3", "w1"]))
    mangled = st.tuples(_NAME, st.sampled_from(["=", "=", "", "==", " = "]), _NAME)
    pairs = draw(st.lists(st.one_of(plausible, mangled), min_size=1, max_size=3))
    text = draw(st.one_of(st.just(",".join(f"{a}{eq}{b}" for a, eq, b in pairs)), _NOISE))
    masters = draw(st.booleans())
    command = ("plan", "migrate-masters") if masters else ("plan", "etcd", "migrate")
    good = (_pairs_good(text, _is("master"), _not("master")) if masters
            else _pairs_good(text, _is("etcd"), _not("etcd")))
    return Case(_with_inventory(*command, "--replace", text), good=good)


def _hosts_good(text: str, ok: Callable[[str], bool]) -> bool:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return bool(names) and len(names) == len(set(names)) and all(map(ok, names))


@st.composite
def host_cases(draw) -> Case:
    text = draw(st.one_of(_NAME, st.lists(_NAME, min_size=1, max_size=3).map(",".join)))
    command, ok = draw(st.sampled_from([
        (("plan", "add-master"), _not("master")), (("plan", "remove-master"), _is("master")),
        (("plan", "etcd", "add"), _not("etcd")), (("plan", "etcd", "remove"), _is("etcd"))]))
    good = ok(text) if command[1].endswith("master") else _hosts_good(text, ok)
    return Case(_with_inventory(*command, argument=text), good=good)


@st.composite
def restart_cases(draw) -> Case:
    components = st.sampled_from(["etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet",
                                  "etcd,kube-apiserver", "", ","])
    options = []
    for option, values in (("--component", st.one_of(components, _NOISE)),
                           ("--host", st.one_of(_NAME, st.lists(_NAME, max_size=3).map(",".join))),
                           ("--timeout", st.one_of(st.sampled_from(["5", "3600", "4", "1e9", "nan", "-1", "x"]),
                                                   _NOISE))):
        if draw(st.booleans()):
            options += [option, draw(values)]
    return Case(_with_inventory("plan", "rolling-restart", *options))


_ADDRESS = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.sampled_from(["10.0.0.11", "10.0.0.100", "10.0.0.0", "10.0.0.255", "10.0.1.200", "10.0.0.200", "10.0.0.300",
                     "010.0.0.200", " 10.0.0.200", "10.0.0.200/24", "", "vip.example.com"]),
    st.integers(0, 255).map(lambda i: f"10.0.0.{i}"), _NOISE)
_NUMBER = st.one_of(st.integers(-2, 70000).map(str), st.sampled_from(["6443", "8443", "51", "52", "255", "256"]),
                    _NOISE)


def _vip_good(vip: str, port: str | None, vrid: str | None) -> bool | None:
    """Refused for sure (False), or not decided here (None): the rest needs the hosts."""
    try:
        address = ipaddress.IPv4Address(vip.strip())
    except ValueError:
        return False
    network = GOOD.network
    assert network is not None and GOOD.vip is not None
    taken = {GOOD.vip.address, network.network_address, network.broadcast_address, *(h.address for h in GOOD.hosts)}
    bad_port = port is not None and (not port.lstrip("-").isdigit() or not 1 <= int(port) <= 65535 or int(port) == 6443)
    bad_vrid = vrid is not None and (not vrid.lstrip("-").isdigit() or not 1 <= int(vrid) <= 255 or int(vrid) == 51)
    return False if address not in network or address in taken or bad_port or bad_vrid else None


@st.composite
def endpoint_cases(draw) -> Case:
    vip = draw(_ADDRESS)
    port = draw(st.none() | _NUMBER)
    vrid = draw(st.none() | _NUMBER)
    options = ["--vip", vip] + (["--port", port] if port is not None else []) + (["--vrid", vrid] if vrid else [])
    if draw(st.booleans()):
        options += ["--retire-san"]
    if draw(st.booleans()):
        options += ["--batch", draw(_NUMBER)]
    return Case(_with_inventory("plan", "change-endpoint", *options),
                good=_vip_good(vip, port, vrid or None) if len(options) <= 7 else None)


_URL = st.one_of(
    st.builds(lambda scheme, host, port, tail: f"{scheme}://{host}{port}{tail}",
              st.sampled_from(["https", "http", "HTTPS", "", "ftp"]), _ADDRESS,
              st.sampled_from([":8443", ":6443", "", ":0", ":99999", ":x"]), st.sampled_from(["", "/", "/x", "?a", "#"])),
    _NOISE)


@st.composite
def repoint_cases(draw) -> Case:
    options = ["--server", draw(_URL)]
    if draw(st.booleans()):
        options += ["--etcd", draw(st.lists(_URL, max_size=2).map(",".join))]
    if draw(st.booleans()):
        options += ["--hosts", draw(st.lists(_NAME, max_size=3).map(",".join))]
    if draw(st.booleans()):
        options += [draw(st.sampled_from(["--batch", "--failure-budget", "--node-timeout"])), draw(_NUMBER)]
    return Case(_with_inventory("plan", "repoint-nodes", *options))


@st.composite
def discover_cases(draw) -> Case:
    target = draw(st.one_of(st.builds(lambda user, at, host: f"{user}{at}{host}", st.sampled_from(["", "root", "ops", " "]),
                                      st.sampled_from(["@", "", "@@"]), _ADDRESS), _NOISE))
    port = draw(st.none() | _NUMBER)
    options = ["--port", port] if port is not None else []
    args = ("inventory", "discover", *options, "--output", "{dir}/discovered.yaml", "--", target)
    return Case(args)


_DURATION = st.one_of(st.sampled_from(["50ms", "30s", "2m", "0s", "0", "-1s", "1h", "1e400s", "nan", "ms", ""]), _NOISE)


@st.composite
def probe_cases(draw) -> Case:
    options = []
    for option in ("--duration", "--interval"):
        if draw(st.booleans()):
            options += [option, draw(_DURATION)]
    return Case(("probe", *options, "-i", "{dir}/cluster.yaml", "--out", "{dir}/probe"))


def _plan_text() -> str:
    plan = rolling_restart_plan(
        operation="rolling-restart", operation_id="rolling-restart-20260101-000000-abcd", arguments={}, cluster=GOOD,
        components=("kube-apiserver",), hosts=list(GOOD.masters), leader_host=None, unhealthy_members=(),
        inventory_digest=inventory_digest(GOOD_YAML), now=datetime(2026, 1, 1, tzinfo=timezone.utc))
    return plan_json(plan)


@st.composite
def plan_file_cases(draw) -> Case:
    command = draw(st.sampled_from(["apply", "apply", "resume", "rollback", "journal", "report"]))
    if command == "apply" and draw(st.booleans()):
        return Case(_with_inventory("apply", "--yes", "--no-probe", argument="{dir}/plan.json"),
                    files=(("plan.json", draw(mutated(_plan_text()))),))
    # the case's journal is empty: every operation id is unknown, and so is every saved plan
    operation_id = draw(st.one_of(st.sampled_from(["rolling-restart-20260101-000000-abcd", "..", "/", "-"]), _NOISE))
    if command == "journal":
        return Case(("journal", "--journal", "{dir}/journal.sqlite", "--", operation_id), good=False)
    extra = ("--no-check",) if command == "report" and draw(st.booleans()) else ()
    return Case(_with_inventory(command, *extra, argument=operation_id), good=False)


@dataclass(frozen=True)
class InputClass:
    name: str
    cases: st.SearchStrategy[Case]
    examples: int


CLASSES = (
    InputClass("cluster.yaml, mutated (check, inventory show, lb apply, plan, probe)", inventory_cases(), 60),
    InputClass("kubeasz and kubespray inventories, mutated (`inventory import`)", import_cases(), 60),
    InputClass("kubespray group_vars, mutated (`inventory import kubespray --group-vars`)", group_vars_cases(), 25),
    InputClass("`--replace OLD=NEW,...` (migrate-masters, etcd migrate)", replace_cases(), 60),
    InputClass("HOST arguments (add-master, remove-master, etcd add, etcd remove)", host_cases(), 40),
    InputClass("rolling-restart `--component`, `--host`, `--timeout`", restart_cases(), 30),
    InputClass("change-endpoint `--vip`, `--port`, `--vrid`, `--batch`", endpoint_cases(), 60),
    InputClass("repoint-nodes `--server`, `--etcd`, `--hosts`, counts", repoint_cases(), 40),
    InputClass("inventory discover `[USER@]ADDRESS`, `--port`", discover_cases(), 30),
    InputClass("probe `--duration`, `--interval`", probe_cases(), 20),
    InputClass("plan files (apply) and operation ids (resume, rollback, journal, report)", plan_file_cases(), 40),
)


def outcomes(spec: InputClass, directory: Path, touched: list[str]) -> Counter[str]:
    """Each outcome's count over the class's generated cases (always the same cases)."""
    found: Counter[str] = Counter()
    numbers = itertools.count()

    @settings(max_examples=spec.examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec.cases)
    def each(case: Case) -> None:
        found[run_case(case, directory / str(next(numbers)), touched)[0]] += 1

    each()
    return found


@pytest.fixture(scope="module")
def results(tmp_path_factory, guard: list[str]) -> Callable[[int], Counter[str]]:
    """The outcomes of class ``index``, run once for the module."""
    workdir = tmp_path_factory.mktemp("bad-input")
    done: dict[int, Counter[str]] = {}

    def of(index: int) -> Counter[str]:
        if index not in done:
            done[index] = outcomes(CLASSES[index], workdir / str(index), guard)
        return done[index]

    return of


@pytest.mark.parametrize("index", range(len(CLASSES)), ids=[c.name.split(" (")[0].strip("`") for c in CLASSES])
def test_each_case_is_refused_in_one_line_or_goes_on_only_with_good_input(index: int, results):
    assert results(index)[REFUSED] > 0


def bad_input_table(results: Callable[[int], Counter[str]]) -> str:
    lines = ["| input class | cases tried | refused in one line, no host touched | done without a host "
             "| passed every check, stopped at the first connection |", "|---|---|---|---|---|"]
    for index, spec in enumerate(CLASSES):
        found = results(index)
        lines.append(f"| {spec.name} | {sum(found.values())} | {found[REFUSED]} | {found[NO_HOST]} "
                     f"| {found[TO_HOSTS]} |")
    return "\n".join(lines) + "\n"


def test_the_bad_input_table_in_the_docs_is_what_the_cases_do(results):
    assert_doc_table(RELIABILITY_MD, "tests/unit/test_bad_input.py", bad_input_table(results))


def test_the_stubs_stop_every_way_to_a_host(tmp_path: Path, guard: list[str]):
    """The stubs see what a good plan request does first: connect over SSH."""
    outcome, where = run_case(Case(_with_inventory("plan", "add-master", argument="s1"), good=True), tmp_path, guard)
    assert outcome == TO_HOSTS and where.startswith("ssh ")
    with pytest.raises(HostTouched):
        socket.create_connection(("10.0.0.11", 22))
    with pytest.raises(OSError):
        socket.gethostbyname("master1.example.com")

