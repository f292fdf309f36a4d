"""The lab's ``systemctl`` and ``journalctl -u``: real unit files, no systemd.

Lab hosts are namespaces without an init system. This module reads the units systemd
would read (``/etc/systemd/system``, ``/run/systemd/system``, ``/lib/systemd/system``,
``/usr/lib/systemd/system`` and their ``<unit>.d/*.conf`` drop-ins) and runs each
started service under a detached supervisor process of its own.

Wrappers (``sh`` scripts bind-mounted over the real commands) must pass::

    /usr/bin/systemctl:   exec <standalone_argv()> "$@"
    /usr/bin/journalctl:  exec <standalone_argv()> journalctl "$@"

Per unit, under ``/run/kubeha-systemd/``:

- ``<unit>.lock``: flock held by the live supervisor, so a dead supervisor (killed, or a
  lab host "rebooted") is never mistaken for a running unit; its state reads inactive;
- ``<unit>.state``: state written by the supervisor (pids, active state, result, restarts),
  a ``marshal``-ed dict;
- ``<unit>.ctl``: the supervisor's control socket (a request is a verb and a newline, the
  reply a ``marshal``-ed dict, then the supervisor closes the connection);
- ``<unit>.notify``: the ``NOTIFY_SOCKET`` of ``Type=notify`` services.

Service output goes to ``/var/log/kubeha-systemd/<unit>.log``, one timestamp per line.

The "control group" of a unit is the supervisor's process group plus the main process's
group: processes that called ``setsid`` themselves (the kubelet stand-in's static pods)
survive ``stop`` and restarts of their unit. Processes that outlive their unit must not
keep writing to their inherited stdout (the supervisor's log pipe closes with it).

As in systemd, a running supervisor keeps the configuration it loaded until
``daemon-reload``; ``status``/``start`` warn when the files changed on disk. A unit that is
not running is read from disk afresh. Start rate limits (StartLimit*) are not enforced.
"""

from __future__ import annotations

# Every systemctl call is an interpreter's start, and the lab makes thousands (four per host
# and repoint in the fan-out benchmark): this file imports only modules written in C. json,
# re, socket and signal would pull in enum, functools and collections, 11 of a call's 21 ms
# of CPU where systemd's own systemctl takes a few; so state and replies are marshal-ed, the
# sockets and signals are _socket's and _signal's, and re loads only where a pattern is needed.
import _signal
import _socket
import fcntl
import grp
import marshal
import os
import pwd
import resource
import select
import sys
import time

STATE_DIR = "/run/kubeha-systemd"
LOG_DIR = "/var/log/kubeha-systemd"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system",
             "/usr/lib/systemd/system")
ENABLE_DIR = "/etc/systemd/system"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".mount", ".path", ".slice",
                 ".scope", ".device", ".swap", ".automount")

# The lab runs etcd ahead of the other programs for the CPU, as etcd's tuning guide asks
# of a shared host: on the lab's 2 cores nine hosts' daemons and the tests compete, and a
# leader starved past its 1 s election timeout stalls the whole API for a second or more.
# This systemctl (units) and the lab's kubelet (static pods) start it at this nice value;
# here, not in a module of its own: the supervisor loads this file alone.
ETCD_NICE = -10


def lab_nice(program: str) -> int:
    """The nice value the lab starts ``program`` (a container or unit name) at."""
    return ETCD_NICE if program in ("etcd", "etcd.service") else 0


# systemctl's exit codes (LSB).
EXIT_FAILURE = 1
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4
EXIT_NOT_FOUND = 5

RUNNING_STATES = ("active", "activating", "deactivating", "reloading")
CLEAN_SIGNALS = (_signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM, _signal.SIGPIPE)
# signal numbers to names, as signal.Signals has them (without its aliases)
SIGNAL_NAMES = {number: name for name, number in vars(_signal).items()
                if name.startswith("SIG") and not name.startswith("SIG_")
                and name not in ("SIGIOT", "SIGCLD", "SIGPOLL")}
DEFAULT_TIMEOUT = 90.0
# Exit statuses systemd gives its own failures to set up a process.
EXIT_CHDIR, EXIT_EXEC, EXIT_USER = 200, 203, 217

JOB_FAILED = {
    "exit-code": "the control process exited with error code",
    "signal": "a fatal signal was delivered to the control process",
    "core-dump": "a fatal signal was delivered causing the control process to dump core",
    "timeout": "a timeout was exceeded",
    "protocol": "the service did not take the steps required by its unit configuration",
    "resources": "of unavailable resources or another system error",
}


class UnitError(Exception):
    """A one-line message for the user and systemctl's exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- unit files


def unit_name(arg: str) -> str:
    """``nginx`` -> ``nginx.service``, as systemctl completes names."""
    return arg if arg.endswith(UNIT_SUFFIXES) else arg + ".service"


def parse_ini(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) assignments in file order, continuation lines joined."""
    assignments, section, pending = [], "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")):
            continue  # comments are skipped even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, value = line.split("=", 1)
            assignments.append((section, key.strip(), value.strip()))
    return assignments


class Unit:
    """A service unit as loaded from its fragment and drop-ins."""

    def __init__(self, name: str):
        self.name = name
        self.prefix, _, rest = name[: -len(".service")].partition("@")
        self.instance = rest
        template = f"{self.prefix}@.service" if "@" in name else None
        self.path = find_fragment(name, template)
        if self.path is None:
            raise UnitError(f"Unit {name} not found.", EXIT_NOT_FOUND)
        self.dropins = find_dropins([n for n in (template, name) if n])
        self.assignments: list[tuple[str, str, str]] = []
        for path in [self.path, *self.dropins]:
            with open(path, encoding="utf-8", errors="replace") as f:
                self.assignments += parse_ini(f.read())
        self.fingerprint = fingerprint(name)

    def values(self, section: str, key: str) -> list[str]:
        """Every value of a list setting; an empty assignment resets the list."""
        found: list[str] = []
        for s, k, v in self.assignments:
            if s == section and k == key:
                found = found + [v] if v else []
        return [self.specifiers(v) for v in found]

    def value(self, section: str, key: str, default: str = "") -> str:
        found = [v for s, k, v in self.assignments if s == section and k == key]
        return self.specifiers(found[-1]) if found and found[-1] else default

    def service(self, key: str, default: str = "") -> str:
        return self.value("Service", key, default)

    def flag(self, key: str) -> bool:
        return self.service(key, "no").lower() in ("1", "yes", "true", "on")

    def seconds(self, key: str, default: float) -> float:
        timeout = key.startswith("Timeout")
        text = self.service(key) or (self.service("TimeoutSec") if timeout else "")
        return parse_timespan(text, default, zero_is_infinite=timeout)

    @property
    def description(self) -> str:
        return self.value("Unit", "Description", self.name)

    @property
    def type(self) -> str:
        return self.service("Type", "simple")

    def specifiers(self, text: str) -> str:
        if "%" not in text:
            return text
        table = {"n": self.name, "N": self.name[: -len(".service")], "p": self.prefix,
                 "P": self.prefix, "i": self.instance, "I": self.instance,
                 "H": _socket.gethostname(), "t": "/run", "%": "%"}
        import re

        return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)

    def check(self) -> None:
        """Refuse what systemd refuses to load."""
        starts = self.values("Service", "ExecStart")
        if self.type != "oneshot" and len(starts) != 1:
            raise UnitError(f"Unit {self.name} has a bad unit file setting.")


def find_fragment(name: str, template: str | None) -> str | None:
    for candidate in (name, template):
        for directory in UNIT_DIRS if candidate else ():
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    return None


def find_dropins(names: list[str]) -> list[str]:
    """``<unit>.d/*.conf`` sorted by file name; a name in an earlier dir masks later ones."""
    by_file: dict[str, str] = {}
    for name in names:
        for directory in reversed(UNIT_DIRS):
            dropin_dir = os.path.join(directory, name + ".d")
            for entry in sorted(os.listdir(dropin_dir)) if os.path.isdir(dropin_dir) else ():
                if entry.endswith(".conf"):
                    by_file[entry] = os.path.join(dropin_dir, entry)
    return [by_file[k] for k in sorted(by_file)]


def fingerprint(name: str) -> list[list]:
    """What changes when a unit's files change on disk (for the daemon-reload warning)."""
    files = []
    template = f"{name.split('@')[0]}@.service" if "@" in name else None
    fragment = find_fragment(name, template)
    for path in ([fragment] if fragment else []) + find_dropins([n for n in (template, name) if n]):
        st = os.stat(path)
        files.append([path, st.st_mtime_ns, st.st_size])
    return files


_TIME_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1, "s": 1, "sec": 1,
               "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60,
               "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
               "days": 86400}


def parse_timespan(text: str, default: float, *, zero_is_infinite: bool = False) -> float:
    """systemd time spans: ``90``, ``100ms``, ``1min 30s``, ``infinity``."""
    text = text.strip().lower()
    if not text:
        return default
    if text == "infinity":
        return float("inf")
    if text.replace(".", "", 1).isdigit():
        total = float(text)
        return float("inf") if zero_is_infinite and total == 0 else total
    import re

    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*([a-z]*)", text):
        total += float(number) * _TIME_UNITS.get(unit, 1)
    return float("inf") if zero_is_infinite and total == 0 else total


# ---------------------------------------------------------------- command lines


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "s": " "}


def split_words(text: str) -> list[str]:
    """Split like systemd: single and double quotes, C escapes outside single quotes."""
    words: list[str] = []
    word: list[str] | None = None
    i, quote = 0, ""
    while i < len(text):
        c = text[i]
        if c == "\\" and quote != "'" and i + 1 < len(text):
            word = word if word is not None else []
            word.append(_ESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                word.append(c)
        elif c in "'\"":
            quote, word = c, word if word is not None else []
        elif c.isspace():
            if word is not None:
                words.append("".join(word))
            word = None
        else:
            word = word if word is not None else []
            word.append(c)
        i += 1
    if word is not None:
        words.append("".join(word))
    return words


def expand_words(words: list[str], env: dict[str, str]) -> list[str]:
    """``$VAR`` as a whole word splits into words, ``${VAR}`` is one word, ``$$`` is ``$``."""
    out: list[str] = []
    for word in words:
        if "$" not in word:
            out.append(word)
            continue
        import re

        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            out += env.get(whole.group(1), "").split()
            continue
        out.append(re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                          lambda m: env.get(m.group(1), "") if m.group(1) else "$", word))
    return out


class Command:
    """One Exec*= line: its prefixes and words (specifiers expanded, variables not yet)."""

    def __init__(self, line: str):
        prefix = line[: len(line) - len(line.lstrip("-@+!:"))]
        self.ignore_failure = "-" in prefix
        self.privileged = "+" in prefix or "!" in prefix
        self.argv0_given = "@" in prefix
        self.expand = ":" not in prefix
        self.words = split_words(line[len(prefix):])
        self.line = line

    def argv(self, env: dict[str, str]) -> tuple[str, list[str]]:
        """(executable, argv) with the environment expanded."""
        words = expand_words(self.words, env) if self.expand else list(self.words)
        if not words:
            raise UnitError(f"empty command line: {self.line}")
        path = words.pop(0) if self.argv0_given else words[0]
        return path, words


def read_environment_file(path: str) -> dict[str, str]:
    env: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for _, key, value in parse_ini("[x]\n" + f.read()):
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                import re

                value = value[1:-1] if value[0] == "'" else \
                    re.sub(r"\\(.)", r"\1", value[1:-1])
            env[key] = value
    return env


def service_environment(unit: Unit) -> dict[str, str]:
    """The environment systemd gives the service's processes (not the caller's)."""
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8"}
    user = unit.service("User")
    if user:
        try:
            entry = pwd.getpwnam(user)
            env.update(USER=user, LOGNAME=user, HOME=entry.pw_dir, SHELL=entry.pw_shell)
        except KeyError:
            pass  # the spawn fails with a log line saying so
    for line in unit.values("Service", "Environment"):
        for assignment in split_words(line):
            key, sep, value = assignment.partition("=")
            if sep:
                env[key] = value
    for line in unit.values("Service", "EnvironmentFile"):
        optional = line.startswith("-")
        path = line.lstrip("-")
        try:
            env.update(read_environment_file(path))
        except OSError:
            if not optional:
                raise UnitError(f"Failed to load environment files: {path}", EXIT_FAILURE)
    runtime = unit.service("RuntimeDirectory").split()
    if runtime:
        env["RUNTIME_DIRECTORY"] = ":".join(f"/run/{d}" for d in runtime)
    return env


def find_executable(path: str, search: str) -> str:
    if "/" in path:
        return path
    for directory in search.split(":"):
        candidate = os.path.join(directory, path)
        if os.access(candidate, os.X_OK):
            return candidate
    return path


def parse_limit(text: str) -> tuple[int, int]:
    soft, _, hard = text.partition(":")
    hard = hard or soft

    def one(v: str) -> int:
        return resource.RLIM_INFINITY if v.strip() == "infinity" else int(v)

    return one(soft), one(hard)


# ---------------------------------------------------------------- state and processes


def state_path(name: str, suffix: str) -> str:
    return os.path.join(STATE_DIR, name + suffix)


def read_state(name: str) -> dict:
    """The unit's state; running states of a dead supervisor read as inactive."""
    try:
        with open(state_path(name, ".state"), "rb") as f:
            state = marshal.load(f)
    except (OSError, ValueError, EOFError, TypeError):
        state = {}
    if not state or (state.get("state") in RUNNING_STATES and not supervisor_alive(name)):
        return {"state": "inactive", "substate": "dead", "result": state.get("result", "success")}
    return state


def supervisor_alive(name: str) -> bool:
    try:
        fd = os.open(state_path(name, ".lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def write_state(name: str, state: dict) -> None:
    path = state_path(name, ".state")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        marshal.dump(state, f)
    os.replace(tmp, path)


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def children_of(parent: int) -> list[int]:
    """The kernel's list of a process's children (each thread's), not a scan of every process:
    with hundreds of lab hosts on one machine a scan of /proc costs tens of ms per call."""
    try:
        threads = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return []
    children: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{parent}/task/{tid}/children") as f:
                children += (int(pid) for pid in f.read().split())
        except OSError:
            continue  # the thread or the process ended meanwhile
    return children


def descendants(root: int) -> list[int]:
    found: list[int] = []
    pending = children_of(root)
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children_of(pid)
    return found


def pid_alive(pid: int) -> bool:
    stat = proc_stat(pid) if pid > 0 else None
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgids: set[int], supervisor: int) -> list[int]:
    """Live processes in the given process groups, below the unit's supervisor: it made both
    groups (its own by setsid) and, as a child subreaper, adopts their orphans, so every member
    is its descendant, as every process of a systemd unit is in the unit's cgroup."""
    pgids = pgids - {0, -1}
    members = []
    for pid in descendants(supervisor):
        stat = proc_stat(pid)
        if stat and stat[2] in pgids and stat[0] not in ("Z", "X"):
            members.append(pid)
    return members


def send_signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def parse_signal(text: str) -> int:
    text = text.strip().upper()
    if text.isdigit():
        return int(text)
    try:
        return int(getattr(_signal, text if text.startswith("SIG") else "SIG" + text))
    except AttributeError:
        raise UnitError(f"Failed to parse signal string {text}.") from None


def timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def exit_description(status: int) -> tuple[str, int, str]:
    """(code, status, text) of a wait status, like systemd's 'code=exited, status=1/FAILURE'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = "dumped" if os.WCOREDUMP(status) else "killed"
        return code, sig, f"code={code}, status={sig}/{SIGNAL_NAMES[sig][3:]}"
    code = os.WEXITSTATUS(status)
    names = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", EXIT_CHDIR: "CHDIR",
             EXIT_EXEC: "EXEC", EXIT_USER: "USER"}
    return "exited", code, f"code=exited, status={code}/{names.get(code, code)}"


# ---------------------------------------------------------------- the supervisor


class Conn:
    """A requester waiting for a reply: a control-socket client or the starting systemctl."""

    def __init__(self, sock: _socket.socket):
        self.sock = sock

    def reply(self, ok: bool, result: str = "success", message: str = "") -> None:
        try:
            self.sock.sendall(marshal.dumps({"ok": ok, "result": result, "message": message}))
        except OSError:
            pass  # the caller gave up waiting (--no-block or a closed SSH session)
        self.sock.close()


class Aborted(Exception):
    """A stop or restart request arrived while starting."""


class Supervisor:
    """Runs one unit's processes in its own process group; one per running unit."""

    def __init__(self, unit: Unit, starter: Conn):
        self.unit = unit
        self.name = unit.name
        self.start_waiters = [starter]
        self.requests: list[tuple[str, Conn]] = []
        self.exited: dict[int, int] = {}  # pid -> wait status, for every reaped child
        self.main_pid = 0
        self.main_pgid = 0
        self.ready = False
        self.status_text = ""
        self.state = {"state": "activating", "substate": "start", "result": "success",
                      "restarts": 0, "supervisor_pid": os.getpid(),
                      "fingerprint": unit.fingerprint, "type": unit.type}
        self.out_buffer = b""

    # -- setup and the event pump

    def setup(self) -> None:
        os.setpgid(0, 0)
        self.pgid = os.getpgid(0)
        self.set_child_subreaper()
        self.log_fd = os.open(os.path.join(LOG_DIR, self.name + ".log"),
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(self.log_fd if fd else devnull, fd)
        os.close(devnull)
        self.out_r, self.out_w = os.pipe()
        os.set_blocking(self.out_r, False)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        _signal.set_wakeup_fd(wake_w)
        _signal.signal(_signal.SIGCHLD, lambda *_: None)
        for sig in (_signal.SIGTERM, _signal.SIGINT):
            _signal.signal(sig, lambda *_: self.requests.append(("stop", None)))
        _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
        self.notify_path = state_path(self.name, ".notify")
        self.notify = self.bind(_socket.SOCK_DGRAM, self.notify_path)
        os.chmod(self.notify_path, 0o666)  # services running as User= must reach it
        self.ctl = self.bind(_socket.SOCK_STREAM, state_path(self.name, ".ctl"))
        self.ctl.listen(16)

    @staticmethod
    def bind(kind: int, path: str) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, kind)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(path)
        sock.setblocking(False)
        return sock

    @staticmethod
    def set_child_subreaper() -> None:
        """Daemons that double-fork (Type=forking) stay our children, so we see them exit."""
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for anything (signals, output, notify, requests); handle it."""
        try:
            readable, _, _ = select.select(
                [self.wake_r, self.out_r, self.notify, self.ctl], [], [], max(timeout, 0))
        except InterruptedError:
            readable = []
        if self.wake_r in readable:
            while True:
                try:
                    if not os.read(self.wake_r, 512):
                        break
                except BlockingIOError:
                    break
        self.reap()
        if self.out_r in readable:
            self.read_output()
        if self.notify in readable:
            self.read_notify()
        if self.ctl in readable:
            self.accept_request()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = status
            if len(self.exited) > 256:  # orphans we adopted and nobody asks about
                self.exited.pop(next(iter(self.exited)))

    def read_output(self) -> None:
        try:
            data = os.read(self.out_r, 65536)
        except BlockingIOError:
            return
        self.out_buffer += data
        *lines, self.out_buffer = self.out_buffer.split(b"\n")
        if len(self.out_buffer) > 8192:
            lines, self.out_buffer = lines + [self.out_buffer], b""
        ident = self.name[: -len(".service")]
        for line in lines:
            self.write_log(ident, line.decode(errors="replace"))

    def log(self, message: str) -> None:
        self.write_log("systemd", f"{self.name}: {message}")

    def write_log(self, ident: str, text: str) -> None:
        os.write(self.log_fd, f"{timestamp()} {ident}: {text}\n".encode())

    def read_notify(self) -> None:
        while True:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    self.ready = True
                elif key == "MAINPID" and value.isdigit():
                    self.set_main(int(value))
                elif key == "STATUS":
                    self.status_text = value
                    self.save()

    def accept_request(self) -> None:
        try:
            sock = accept(self.ctl)
        except BlockingIOError:
            return
        sock.settimeout(2)
        try:
            op = read_request(sock)
        except (OSError, ValueError):
            sock.close()
            return
        sock.setblocking(True)
        if op == "daemon-reload":
            # PID 1 reloads whatever a unit is doing: a unit that never becomes active (a
            # Restart=always loop of a failing start) must not hold up every daemon-reload
            self.daemon_reload()
            Conn(sock).reply(True)
            return
        self.requests.append((op, Conn(sock)))

    def wait_until(self, done, deadline: float, *, abortable: bool = True) -> bool:
        """Pump events until ``done()``; False on deadline. Raises Aborted on a stop request."""
        while not done():
            if abortable and any(op in ("stop", "restart") for op, _ in self.requests):
                raise Aborted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(remaining, 0.5))
        return True

    # -- state

    def set_state(self, state: str, substate: str, **extra) -> None:
        now = time.time()
        if state != self.state["state"]:
            self.state[f"{state}_since"] = now
        self.state.update(state=state, substate=substate, since=now, **extra)
        self.save()

    def save(self) -> None:
        self.state.update(main_pid=self.main_pid, main_pgid=self.main_pgid,
                          pgid=self.pgid, status_text=self.status_text)
        write_state(self.name, self.state)

    def set_main(self, pid: int) -> None:
        self.main_pid = pid
        stat = proc_stat(pid)
        self.main_pgid = stat[2] if stat else self.pgid
        self.save()

    def main_alive(self) -> bool:
        if self.main_pid > 0 and not pid_alive(self.main_pid):
            self.reap()  # a zombie: collect its exit status now
        return self.main_pid > 0 and self.main_pid not in self.exited and pid_alive(self.main_pid)

    def members(self) -> list[int]:
        return group_members({self.pgid, self.main_pgid}, os.getpid())

    # -- processes

    def spawn(self, command: Command, *, main: bool = False, extra_env: dict | None = None) -> int:
        """Fork and exec one command line; exec failures end the child with systemd's codes."""
        unit = self.unit
        env = dict(self.env, **(extra_env or {}))
        if self.main_pid:
            env["MAINPID"] = str(self.main_pid)
        path, argv = command.argv(env)
        path = find_executable(path, env["PATH"])
        run_as_user = not command.privileged and (main or not unit.flag("PermissionsStartOnly"))
        user = unit.service("User") if run_as_user else ""
        group = unit.service("Group") if run_as_user else ""
        workdir = unit.service("WorkingDirectory")
        limit = unit.service("LimitNOFILE")
        pid = os.fork()
        if pid:
            return pid
        code, step = EXIT_EXEC, "EXEC"
        try:  # the child must end in exec or _exit, never back in the supervisor's code
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(self.out_w, 1)
            os.dup2(self.out_w, 2)
            for sig in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGHUP):
                _signal.signal(sig, _signal.SIG_DFL)  # ignored dispositions survive exec
            _signal.set_wakeup_fd(-1)
            os.umask(0o022)
            os.nice(lab_nice(self.name))
            if limit:
                self.set_nofile_limit(*parse_limit(limit))
            code, step = EXIT_USER, "USER"
            if user or group:
                self.drop_privileges(user, group)
            code, step = EXIT_CHDIR, "CHDIR"
            if workdir and workdir != "-":
                home = env.get("HOME", "/root")
                directory = home if workdir.lstrip("-") == "~" else workdir.lstrip("-")
                try:
                    os.chdir(directory)
                except OSError:
                    if not workdir.startswith("-"):
                        raise
            code, step = EXIT_EXEC, "EXEC"
            os.execve(path, argv, env)
        except BaseException as e:  # noqa: BLE001 - reported in the log, then _exit
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            os.write(2, f"{self.name}: Failed at step {step} spawning {path}: {reason}\n".encode())
        os._exit(code)

    @staticmethod
    def set_nofile_limit(soft: int, hard: int) -> None:
        """LimitNOFILE=, capped at our own hard limit when we may not raise it (containers)."""
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            capped = [ceiling if v == resource.RLIM_INFINITY else min(v, ceiling)
                      for v in (soft, hard)]
            resource.setrlimit(resource.RLIMIT_NOFILE, tuple(capped))

    @staticmethod
    def drop_privileges(user: str, group: str) -> None:
        try:
            entry = pwd.getpwnam(user) if user else None
        except KeyError:
            raise UnitError(f"no such user {user} (User=)") from None
        try:
            gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
        except KeyError:
            raise UnitError(f"no such group {group} (Group=)") from None
        os.setgroups(os.getgrouplist(user, gid) if entry else [gid])
        os.setgid(gid)
        if entry:
            os.setuid(entry.pw_uid)

    def run_control(self, command: Command, deadline: float, *, abortable: bool = True) -> str:
        """Run a control process (ExecStartPre, ExecReload, ...) to its end; its result."""
        pid = self.spawn(command)
        try:
            finished = self.wait_until(lambda: pid in self.exited, deadline, abortable=abortable)
        except Aborted:
            self.kill_control(pid)
            raise
        if not finished:
            self.log(f"Control process {command.line} timed out. Terminating.")
            self.kill_control(pid)
            return "timeout"
        status = self.exited.pop(pid)
        result = self.result_of(status)
        if result != "success":
            self.log(f"Control process exited, {exit_description(status)[2]}")
        return "success" if command.ignore_failure else result

    def kill_control(self, pid: int) -> None:
        send_signal([pid], _signal.SIGTERM)
        if not self.wait_until(lambda: pid in self.exited, time.monotonic() + 5, abortable=False):
            send_signal([pid], _signal.SIGKILL)
            self.wait_until(lambda: pid in self.exited, time.monotonic() + 5, abortable=False)
        self.exited.pop(pid, None)

    def result_of(self, status: int, *, main: bool = False) -> str:
        code, number, _ = exit_description(status)
        success = self.unit.service("SuccessExitStatus").split()
        if code == "exited":
            return "success" if number == 0 or str(number) in success else "exit-code"
        names = {SIGNAL_NAMES[number], SIGNAL_NAMES[number][3:], str(number)}
        clean = main and self.unit.type != "oneshot" and number in CLEAN_SIGNALS
        if clean or names & set(success):
            return "success"
        return "core-dump" if code == "dumped" else "signal"

    def run_commands(self, key: str, deadline: float, *, abortable: bool = True) -> str:
        for line in self.unit.values("Service", key):
            result = self.run_control(Command(line), deadline, abortable=abortable)
            if result != "success":
                return result
        return "success"

    # -- start

    def conditions_met(self) -> bool:
        checks = {"ConditionPathExists": os.path.exists,
                  "ConditionPathIsDirectory": os.path.isdir,
                  "ConditionFileNotEmpty": lambda p: os.path.isfile(p) and os.path.getsize(p) > 0,
                  "ConditionFileIsExecutable": lambda p: os.path.isfile(p) and os.access(p, os.X_OK),
                  "ConditionDirectoryNotEmpty": lambda p: os.path.isdir(p) and bool(os.listdir(p))}
        for key, check in checks.items():
            for value in self.unit.values("Unit", key):
                path = value.lstrip("|")
                negate = path.startswith("!")
                if check(path.lstrip("!")) == negate:
                    self.log(f"{self.unit.description} was skipped because of an unmet "
                             f"condition check ({key}={value}).")
                    return False
        return True

    def start(self) -> str:
        """Run the start phases; the result (``success``, ``skipped`` or a failure)."""
        unit = self.unit
        self.set_state("activating", "start")
        self.main_pid = self.main_pgid = 0
        self.ready = False
        if not self.conditions_met():
            return "skipped"
        self.log(f"Starting {unit.description}...")
        try:
            self.env = service_environment(unit)
        except UnitError as e:
            self.log(str(e))
            return "resources"
        self.make_runtime_directories()
        deadline = time.monotonic() + unit.seconds("TimeoutStartSec", DEFAULT_TIMEOUT)
        result = self.run_commands("ExecStartPre", deadline)
        if result == "success":
            result = self.start_main(deadline)
        if result == "success":
            result = self.run_commands("ExecStartPost", deadline)
        return result

    def start_main(self, deadline: float) -> str:
        unit = self.unit
        kind = unit.type
        starts = [Command(line) for line in unit.values("Service", "ExecStart")]
        if kind == "oneshot":
            for command in starts:
                result = self.run_control(command, deadline)
                if result != "success":
                    return result
            return "success"
        env = {"NOTIFY_SOCKET": self.notify_path} if kind == "notify" else {}
        pid = self.spawn(starts[0], main=True, extra_env=env)
        if kind == "forking":
            if not self.wait_until(lambda: pid in self.exited, deadline):
                self.kill_control(pid)
                return "timeout"
            result = self.result_of(self.exited.pop(pid))
            return result if result != "success" else self.find_forked_main(deadline)
        self.set_main(pid)
        if kind != "notify":
            return "success"
        if not self.wait_until(lambda: self.ready or not self.main_alive(), deadline):
            return "timeout"
        if self.ready:
            return "success"
        result = self.main_exit_result()
        return "protocol" if result == "success" else result

    def find_forked_main(self, deadline: float) -> str:
        """The daemon's pid: from PIDFile= (it may appear late) or our only child."""
        pid_file = self.unit.service("PIDFile")
        while True:
            if pid_file:
                try:
                    with open(pid_file) as f:
                        pid = int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = 0
            else:
                children = [p for p in children_of(os.getpid()) if pid_alive(p)]
                pid = children[0] if len(children) == 1 else 0
            if pid and pid_alive(pid):
                self.set_main(pid)
                return "success"
            if time.monotonic() >= deadline:
                self.log("New main PID could not be determined.")
                return "protocol" if pid_file else "success"
            self.pump(0.05)

    def make_runtime_directories(self) -> None:
        user = self.unit.service("User")
        for name in self.unit.service("RuntimeDirectory").split():
            path = os.path.join("/run", name)
            os.makedirs(path, exist_ok=True)
            os.chmod(path, int(self.unit.service("RuntimeDirectoryMode", "0755"), 8))
            try:
                entry = pwd.getpwnam(user) if user else None
            except KeyError:
                entry = None
            if entry:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def remove_runtime_directories(self) -> None:
        import shutil

        if not self.unit.flag("RuntimeDirectoryPreserve"):
            for name in self.unit.service("RuntimeDirectory").split():
                shutil.rmtree(os.path.join("/run", name), ignore_errors=True)

    # -- stop

    def stop(self, result: str, *, started: bool = True) -> str:
        """ExecStop, KillSignal per KillMode, SIGKILL after TimeoutStopSec, ExecStopPost."""
        unit = self.unit
        self.set_state("deactivating", "stop")
        deadline = time.monotonic() + unit.seconds("TimeoutStopSec", DEFAULT_TIMEOUT)
        if started:  # like systemd, also after the main process exited on its own
            stop_result = self.run_commands("ExecStop", deadline, abortable=False)
            if stop_result == "timeout":
                result = "timeout"
        mode = unit.service("KillMode", "control-group")
        kill_signal = parse_signal(unit.service("KillSignal", "SIGTERM"))
        whole_group = mode == "control-group"
        targets = self.members() if whole_group else [self.main_pid] if self.main_alive() else []
        if mode != "none" and targets:
            self.set_state("deactivating", "stop-sigterm")
            send_signal(targets, kill_signal)
            send_signal(targets, _signal.SIGCONT)
            gone = (lambda: not self.members()) if whole_group else (lambda: not self.main_alive())
            if not self.wait_until(gone, deadline, abortable=False):
                self.log("State 'stop-sigterm' timed out. Killing.")
                send_signal(self.members() if mode != "process" else [self.main_pid],
                            _signal.SIGKILL)
                self.wait_until(gone, time.monotonic() + 5, abortable=False)
                result = "timeout"
        if self.main_pid in self.exited and result == "success":
            result = self.result_of(self.exited[self.main_pid], main=True)
        self.run_commands("ExecStopPost", time.monotonic() + unit.seconds(
            "TimeoutStopSec", DEFAULT_TIMEOUT), abortable=False)
        if mode in ("control-group", "mixed"):
            send_signal(self.members(), _signal.SIGKILL)
            self.wait_until(lambda: not self.members(), time.monotonic() + 5, abortable=False)
        self.remove_runtime_directories()
        return result

    def main_exit_result(self) -> str:
        status = self.exited.get(self.main_pid)
        if status is None:
            return "success"  # not our child (no status): nothing says it failed
        self.log(f"Main process exited, {exit_description(status)[2]}")
        self.state.update(exec_main_code=exit_description(status)[0],
                          exec_main_status=exit_description(status)[1])
        return self.result_of(status, main=True)

    def should_restart(self, result: str) -> bool:
        policy = self.unit.service("Restart", "no")
        clean = result == "success"
        return {"always": True, "on-success": clean, "on-failure": not clean,
                "on-abnormal": result in ("signal", "core-dump", "timeout"),
                "on-abort": result in ("signal", "core-dump")}.get(policy, False)

    # -- requests while running

    def reload(self) -> tuple[bool, str, str]:
        """(ok, result, message) of running ExecReload=."""
        if not self.unit.values("Service", "ExecReload"):
            return False, "", f"Job type reload is not applicable for unit {self.name}."
        self.set_state("reloading", "reload")
        deadline = time.monotonic() + self.unit.seconds("TimeoutStartSec", DEFAULT_TIMEOUT)
        result = self.run_commands("ExecReload", deadline, abortable=False)
        if self.unit.type == "forking" and self.unit.service("PIDFile"):
            self.find_forked_main(time.monotonic() + 1)
        self.set_state("active", "running")
        return result == "success", result, ""

    def daemon_reload(self) -> None:
        try:
            unit = Unit(self.name)
            unit.check()
        except (UnitError, OSError) as e:
            self.log(f"daemon-reload: keeping the loaded configuration: {e}")
            return
        self.unit = unit
        try:
            self.env = service_environment(unit)
        except UnitError as e:
            self.log(str(e))
        self.state["fingerprint"] = unit.fingerprint
        self.save()

    # -- the life of the unit

    def serve(self) -> None:
        """Start, watch, restart, stop: until the unit is inactive or failed for good."""
        want_start = True
        while want_start:
            try:
                result = self.start()
                aborted = False
            except Aborted:
                result, aborted = "canceled", True
            if result == "skipped":
                self.finish("inactive", "success", ok=True)
                return
            if result == "success":
                if self.unit.type == "oneshot" and not self.unit.flag("RemainAfterExit"):
                    self.log(f"Finished {self.unit.description}.")
                    self.finish("inactive", "success", ok=True)
                    return
                self.log(f"Started {self.unit.description}.")
                self.set_state("active", "exited" if self.unit.type == "oneshot" else "running",
                               result="success")
                self.answer_start(True, "success")
                want_start = self.watch()
                continue
            if not aborted:
                self.log(f"Failed with result '{result}'.")
                self.answer_start(False, result)
            result = self.stop("success" if aborted else result, started=False)
            want_start = self.after_stop(result, requested=aborted)

    def watch(self) -> bool:
        """Serve requests while active; True when the unit must start again."""
        while True:
            if self.main_pid and not self.main_alive() and self.unit.type != "oneshot":
                result = self.main_exit_result()
                self.log(f"Failed with result '{result}'." if result != "success"
                         else "Deactivated successfully.")
                return self.after_stop(self.stop(result), requested=False, reason=result)
            if self.requests:
                op, conn = self.requests.pop(0)
                if op in ("stop", "restart"):
                    self.requests.insert(0, (op, conn))
                    self.log(f"Stopping {self.unit.description}...")
                    return self.after_stop(self.stop("success"), requested=True)
                if op == "reload":
                    ok, result, message = self.reload()
                    if conn:
                        conn.reply(ok, result, message)
                    continue
                if conn:
                    conn.reply(True)
                continue
            self.pump(1.0)

    def after_stop(self, result: str, *, requested: bool, reason: str = "") -> bool:
        """Record how the unit went down; True when it must start again."""
        if requested:
            op, conn = self.pop_stop_request()
            failed = result != "success"
            self.log(f"Stopped {self.unit.description}." if not failed
                     else f"Failed with result '{result}'.")
            if op == "restart":
                self.start_waiters.append(conn) if conn else None
                self.answer_stop_requests()
                return True
            if conn:
                conn.reply(True)
            self.finish("failed" if failed else "inactive", result, ok=True)
            return False
        if not self.should_restart(reason or result):
            self.finish("inactive" if result == "success" else "failed", result,
                        ok=result == "success")
            return False
        restart_sec = self.unit.seconds("RestartSec", 0.1)
        self.set_state("activating", "auto-restart", result=result)
        try:
            self.wait_until(lambda: any(op == "start" for op, _ in self.requests),
                            time.monotonic() + restart_sec)
        except Aborted:
            op, conn = self.pop_stop_request()
            if op == "stop":
                if conn:
                    conn.reply(True)
                self.finish("inactive", "success", ok=True)
                return False
            self.start_waiters.append(conn) if conn else None
        self.take_start_requests()
        self.state["restarts"] += 1
        self.log(f"Scheduled restart job, restart counter is at {self.state['restarts']}.")
        return True

    def pop_stop_request(self) -> tuple[str, Conn | None]:
        for index, (op, conn) in enumerate(self.requests):
            if op in ("stop", "restart"):
                return self.requests.pop(index)
        return "stop", None

    def take_start_requests(self) -> None:
        keep = []
        for op, conn in self.requests:
            if op == "start" and conn:
                self.start_waiters.append(conn)
            else:
                keep.append((op, conn))
        self.requests = keep

    def answer_stop_requests(self) -> None:
        keep = []
        for op, conn in self.requests:
            if op == "stop" and conn:
                conn.reply(True)
            else:
                keep.append((op, conn))
        self.requests = keep

    def answer_start(self, ok: bool, result: str) -> None:
        self.take_start_requests()
        for conn in self.start_waiters:
            conn.reply(ok, result)
        self.start_waiters = []

    def finish(self, state: str, result: str, *, ok: bool) -> None:
        self.set_state(state, "dead" if state == "inactive" else "failed", result=result)
        self.answer_start(ok, result)
        for op, conn in self.requests:
            if conn:
                conn.reply(op in ("stop", "start"), result)
        self.requests = []


def run_supervisor(name: str, lock_fd: int, starter: _socket.socket) -> None:
    """The body of the detached supervisor process (never returns)."""
    # Descriptors inherited from the caller (an SSH session's) must not stay open here. The
    # lock and the starter socket stay, non-inheritable as Python opens them: the lock must
    # not pass on to services (they would keep the unit "running").
    for entry in os.listdir("/proc/self/fd"):
        if int(entry) > 2 and int(entry) not in (lock_fd, starter.fileno()):
            try:
                os.close(int(entry))
            except OSError:
                pass
    try:
        unit = load(name)
    except (UnitError, OSError) as e:
        Conn(starter).reply(False, "resources", str(e))
        os._exit(1)
    supervisor = Supervisor(unit, Conn(starter))  # lock_fd stays open: we hold the lock
    code = 0
    try:
        supervisor.setup()
        supervisor.save()
        supervisor.serve()
    except BaseException:  # noqa: BLE001 - the log is the only place left to say why
        import traceback

        os.write(2, f"{timestamp()} systemd: {unit.name}: supervisor crashed:\n"
                    f"{traceback.format_exc()}".encode())
        supervisor.state.update(state="failed", substate="failed", result="resources")
        try:
            supervisor.save()
        except Exception:  # noqa: BLE001
            pass
        code = 1
    for path in (state_path(unit.name, ".ctl"), state_path(unit.name, ".notify")):
        try:
            os.unlink(path)
        except OSError:
            pass
    # Requests that reached us while we were finishing: their senders try again.
    ctl = getattr(supervisor, "ctl", None)
    while ctl:
        try:
            Conn(accept(ctl)).reply(False, "gone")
        except OSError:
            break
    os._exit(code)


def standalone_argv() -> list[str]:
    """The command that runs this file's ``main`` (arguments follow it): the file imported as a
    top-level module in an isolated interpreter, so only the standard library loads, whatever
    the ``kubeha`` packages import, and Python caches the bytecode (a script run by its path is
    compiled every time: ~4 MB more RSS, in every supervisor too, each a fork of a ``systemctl
    start``). The wrappers the lab puts in place of ``systemctl`` and ``journalctl`` run it:
    ~3 ms less per call than ``python -m``."""
    here, module = os.path.split(os.path.abspath(__file__))
    name = module[:-3]
    return [sys.executable, "-I", "-S", "-c",
            f"import sys; sys.path.append({here!r}); import {name}; sys.exit({name}.main())"]


def spawn_supervisor(name: str, lock_fd: int) -> _socket.socket:
    """Double-fork a supervisor in a session of its own; a socket that gets the start result.
    The supervisor is this process forked, not a new interpreter: this process runs the file
    alone (``standalone_argv``), so it holds nothing a supervisor must not, and a restart saves
    an interpreter's start (~20 ms of CPU). ``ps`` shows it with the command that started it."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        ours.close()
        os.setsid()  # no controlling terminal: an SSH session ending does not reach it
        if os.fork() == 0:
            try:
                run_supervisor(name, lock_fd, theirs)
            finally:
                os._exit(1)  # whatever happens, never back into the caller's code
        os._exit(0)
    theirs.close()
    os.close(lock_fd)
    os.waitpid(pid, 0)
    return ours


# ---------------------------------------------------------------- systemctl verbs


class Options:
    def __init__(self) -> None:
        self.no_block = False
        self.quiet = False
        self.now = False
        self.value = False
        self.properties: list[str] = []
        self.signal = _signal.SIGTERM
        self.kill_whom = "all"
        self.lines = 10


def load(name: str) -> Unit:
    unit = Unit(name)
    unit.check()
    return unit


def request(name: str, op: str, *, wait: bool = True) -> dict | None:
    """Send one request to the unit's supervisor; its reply, or None if none is running."""
    path = state_path(name, ".ctl")
    deadline = time.monotonic() + 5
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except OSError:
            sock.close()
            # A supervisor being spawned holds the lock before it binds its socket.
            if not supervisor_alive(name) or time.monotonic() > deadline:
                return None
            time.sleep(0.05)
    try:
        sock.sendall(op.encode() + b"\n")
        if not wait:
            return {"ok": True, "result": "queued"}
        reply = read_reply(sock)
    finally:
        sock.close()
    return None if reply.get("result") == "gone" else reply


def accept(listening: _socket.socket) -> _socket.socket:
    fd, _ = listening._accept()
    return _socket.socket(fileno=fd)


def read_request(sock: _socket.socket) -> str:
    """The verb a control-socket client sent (a word and a newline)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)
        if not chunk or len(data) > 256:
            raise ValueError("not a request")
        data += chunk
    return data.decode().strip()


def read_reply(sock: _socket.socket) -> dict:
    """The supervisor's reply: all it sends before it closes the connection."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    try:
        reply = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return {"ok": False, "result": "resources"}  # it died before it could answer
    return reply


def job_failed(name: str, verb: str, reply: dict) -> None:
    if reply.get("message"):
        raise UnitError(f"Failed to {verb} {name}: {reply['message']}")
    because = JOB_FAILED.get(reply.get("result", ""))
    reason = f" because {because}" if because else ""
    raise UnitError(f'Job for {name} failed{reason}.\nSee "systemctl status {name}" and '
                    f'"journalctl -xeu {name}" for details.')


def warn_if_changed(name: str) -> None:
    state = read_state(name)
    if supervisor_alive(name) and state.get("fingerprint") != fingerprint(name):
        print(f"Warning: The unit file, source configuration file or drop-ins of {name} "
              "changed on disk. Run 'systemctl daemon-reload' to reload units.", file=sys.stderr)


def start(name: str, opts: Options) -> None:
    load(name)  # refuse a bad unit here, with the caller's stderr
    for _ in range(20):  # a supervisor may be on its way out between our checks
        lock_fd = os.open(state_path(name, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            warn_if_changed(name)
            reply = request(name, "start", wait=not opts.no_block)
            if reply is None:
                time.sleep(0.1)
                continue
        else:
            # Until the supervisor writes its own, is-active must not read the old state.
            write_state(name, {
                "state": "activating", "substate": "start", "result": "success"})
            sock = spawn_supervisor(name, lock_fd)
            if opts.no_block:
                return
            reply = read_reply(sock)
            sock.close()
        if not reply["ok"]:
            job_failed(name, "start", reply)
        return
    raise UnitError(f"Failed to start {name}: its supervisor did not answer.")


def stop(name: str, opts: Options) -> None:
    if not supervisor_alive(name):
        if find_fragment(name, None) is None and not os.path.exists(state_path(name, ".state")):
            raise UnitError(f"Failed to stop {name}: Unit {name} not loaded.", EXIT_NOT_FOUND)
        return
    reply = request(name, "stop", wait=not opts.no_block)
    if reply and not reply["ok"]:
        job_failed(name, "stop", reply)


def restart(name: str, opts: Options) -> None:
    load(name)  # refuse unknown units before stopping anything
    warn_if_changed(name)
    reply = request(name, "restart", wait=not opts.no_block)
    if reply is None:
        start(name, opts)
    elif not reply["ok"]:
        job_failed(name, "restart", reply)


def try_restart(name: str, opts: Options) -> None:
    if read_state(name)["state"] in RUNNING_STATES:
        restart(name, opts)


def reload(name: str, opts: Options) -> None:
    load(name)
    warn_if_changed(name)
    if read_state(name)["state"] not in ("active", "reloading"):
        raise UnitError(f"{name} is not active, cannot reload.")
    reply = request(name, "reload", wait=not opts.no_block)
    if reply is None:
        raise UnitError(f"{name} is not active, cannot reload.")
    if not reply["ok"]:
        job_failed(name, "reload", reply)


def reload_or_restart(name: str, opts: Options) -> None:
    unit = load(name)
    if read_state(name)["state"] in RUNNING_STATES and unit.values("Service", "ExecReload"):
        reload(name, opts)
    else:
        restart(name, opts)


def install_links(unit: Unit) -> list[tuple[str, str]]:
    """(link, target) pairs that enabling the unit creates."""
    links = []
    for key, suffix in (("WantedBy", ".wants"), ("RequiredBy", ".requires")):
        for value in unit.values("Install", key):
            for target in value.split():
                links.append((os.path.join(ENABLE_DIR, target + suffix, unit.name), unit.path))
    for value in unit.values("Install", "Alias"):
        for alias in value.split():
            links.append((os.path.join(ENABLE_DIR, alias), unit.path))
    return links


def enable(name: str, opts: Options) -> None:
    unit = load(name)
    for link, target in install_links(unit):
        if os.path.realpath(link) == os.path.realpath(target):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        print(f"Created symlink {link} \u2192 {target}.", file=sys.stderr)
    if opts.now:
        start(name, opts)


def disable(name: str, opts: Options) -> None:
    unit = load(name)
    for link, _ in install_links(unit):
        if os.path.islink(link):
            os.unlink(link)
            print(f'Removed "{link}".', file=sys.stderr)
    if opts.now:
        stop(name, opts)


def enablement(name: str) -> str:
    try:
        unit = Unit(name)
    except UnitError:
        return "not-found"
    links = install_links(unit)
    if not links:
        return "static"
    return "enabled" if any(os.path.lexists(link) for link, _ in links) else "disabled"


def properties(name: str) -> dict[str, str]:
    """The ``systemctl show`` properties this stand-in knows."""
    state = read_state(name)
    try:
        unit = Unit(name)
    except UnitError:
        unit = None

    def when(key: str) -> str:
        stamp = state.get(key)
        return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(stamp)) if stamp else ""

    return {
        "Type": unit.type if unit else "",
        "Restart": unit.service("Restart", "no") if unit else "",
        "MainPID": str(state.get("main_pid", 0) if state["state"] in RUNNING_STATES else 0),
        "ExecMainPID": str(state.get("main_pid", 0)),
        "ExecMainCode": str(state.get("exec_main_code", "")),
        "ExecMainStatus": str(state.get("exec_main_status", 0)),
        "NRestarts": str(state.get("restarts", 0)),
        "Result": state.get("result", "success"),
        "StatusText": state.get("status_text", ""),
        "Id": name,
        "Names": name,
        "Description": unit.description if unit else name,
        "LoadState": "loaded" if unit else "not-found",
        "ActiveState": state["state"],
        "SubState": state.get("substate", "dead"),
        "FragmentPath": unit.path if unit else "",
        "DropInPaths": " ".join(unit.dropins) if unit else "",
        "UnitFileState": enablement(name) if unit else "",
        "ActiveEnterTimestamp": when("active_since"),
        "InactiveEnterTimestamp": when("inactive_since"),
        "StateChangeTimestamp": when("since"),
        "NeedDaemonReload": "yes" if unit and supervisor_alive(name)
        and state.get("fingerprint") != unit.fingerprint else "no",
    }


def show(names: list[str], opts: Options) -> int:
    wanted = [p for arg in opts.properties for p in arg.split(",") if p]
    blocks = []
    for name in names:
        props = properties(name)
        keys = wanted or list(props)
        lines = [props[k] if opts.value else f"{k}={props[k]}" for k in keys if k in props]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def status(names: list[str], opts: Options) -> int:
    code = 0
    for index, name in enumerate(names):
        if index:
            print()
        try:
            unit = Unit(name)
        except UnitError:
            print(f"Unit {name} could not be found.", file=sys.stderr)
            code = max(code, EXIT_UNKNOWN)
            continue
        warn_if_changed(name)
        props = properties(name)
        state = read_state(name)
        active = f"{props['ActiveState']} ({props['SubState']})"
        if props["ActiveState"] == "failed":
            active = f"failed (Result: {props['Result']})"
        stamp = props["ActiveEnterTimestamp"] if props["ActiveState"] == "active" \
            else props["StateChangeTimestamp"]
        dot = "\u25cf" if props["ActiveState"] in RUNNING_STATES else "\u25cb"
        print(f"{dot} {name} - {unit.description}")
        print(f"     Loaded: loaded ({unit.path}; {props['UnitFileState']})")
        for i, dropin in enumerate(unit.dropins):
            head = "    Drop-In: " if i == 0 else "             "
            print(f"{head}{dropin}")
        print(f"     Active: {active}" + (f" since {stamp}" if stamp else ""))
        if props["ActiveState"] in RUNNING_STATES:
            main = int(props["MainPID"])
            if main:
                print(f"   Main PID: {main} ({proc_text(main, 'comm')})")
            if state.get("status_text"):
                print(f'     Status: "{state["status_text"]}"')
            pids = group_members({state.get("pgid", -1), state.get("main_pgid", -1)},
                                 state.get("supervisor_pid", -1))
            for i, pid in enumerate(sorted(pids)):
                head = "     CGroup: " if i == 0 else "             "
                print(f"{head}{pid} {proc_text(pid, 'cmdline')}")
        else:
            code = max(code, EXIT_NOT_RUNNING)
        log = tail_log(name, opts.lines)
        if log:
            print()
            print("\n".join(log))
    return code


def proc_text(pid: int, entry: str) -> str:
    """``/proc/<pid>/<entry>`` (comm, cmdline) as one line."""
    try:
        with open(f"/proc/{pid}/{entry}", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def tail_log(name: str, lines: int | None) -> list[str]:
    try:
        with open(os.path.join(LOG_DIR, name + ".log"), encoding="utf-8",
                  errors="replace") as f:
            all_lines = f.read().splitlines()
    except OSError:
        return []
    return all_lines if lines is None else all_lines[-lines:] if lines else []


def kill(names: list[str], opts: Options) -> int:
    for name in names:
        state = read_state(name)
        if state["state"] not in RUNNING_STATES:
            continue
        main = state.get("main_pid", 0)
        if opts.kill_whom == "main":
            pids = [main] if main else []
        else:
            pids = group_members({state.get("pgid", -1), state.get("main_pgid", -1)},
                                 state.get("supervisor_pid", -1))
        send_signal(pids, opts.signal)
    return 0


def daemon_reload() -> int:
    try:
        entries = os.listdir(STATE_DIR)
    except OSError:
        return 0
    for entry in entries:
        if entry.endswith(".ctl"):
            request(entry[: -len(".ctl")], "daemon-reload")
    return 0


def is_state(names: list[str], opts: Options, verb: str) -> int:
    good = False
    for name in names:
        if verb == "is-enabled":
            answer = enablement(name)
            if answer == "not-found":
                if not opts.quiet:
                    print(f"Failed to get unit file state for {name}: No such file or directory",
                          file=sys.stderr)
                continue
            good = good or answer in ("enabled", "static", "alias")
        else:
            answer = read_state(name)["state"]
            good = good or answer == ("active" if verb == "is-active" else "failed")
        if not opts.quiet:
            print(answer)
    if good:
        return 0
    return EXIT_NOT_RUNNING if verb == "is-active" else EXIT_FAILURE


UNIT_VERBS = {"start": start, "stop": stop, "restart": restart, "try-restart": try_restart,
              "reload": reload, "reload-or-restart": reload_or_restart, "enable": enable,
              "disable": disable}
FLAGS = {"--no-block": "no_block", "-q": "quiet", "--quiet": "quiet", "--now": "now",
         "--value": "value"}
IGNORED = {"--no-pager", "--system", "--no-legend", "--plain", "--full", "-l", "--all", "-a",
           "--no-ask-password", "--force", "-f", "--no-reload"}
WITH_VALUE = {"-p": "properties", "--property": "properties", "-s": "signal",
              "--signal": "signal", "--kill-whom": "kill_whom", "-n": "lines",
              "--lines": "lines", "--type": None, "-t": None, "--job-mode": None}


def parse_args(argv: list[str]) -> tuple[list[str], Options]:
    opts, positional = Options(), []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in FLAGS:
            setattr(opts, FLAGS[arg], True)
        elif arg in IGNORED:
            continue
        elif arg.split("=", 1)[0] in WITH_VALUE or (arg[:2] in WITH_VALUE and len(arg) > 2):
            key, sep, value = arg.partition("=")
            if not sep and len(arg) > 2 and arg[:2] in WITH_VALUE and not arg.startswith("--"):
                key, value = arg[:2], arg[2:]
            elif not sep:
                if not args:
                    raise UnitError(f"systemctl: option '{arg}' requires an argument")
                value = args.pop(0)
            field = WITH_VALUE[key]
            if field == "properties":
                opts.properties.append(value)
            elif field == "signal":
                opts.signal = parse_signal(value)
            elif field == "lines":
                opts.lines = int(value)
            elif field:
                setattr(opts, field, value)
        elif arg.startswith("-") and arg != "-":
            raise UnitError(f"systemctl: unrecognized option '{arg}'")
        else:
            positional.append(arg)
    return positional, opts


def systemctl(argv: list[str]) -> int:
    positional, opts = parse_args(argv)
    if not positional:
        raise UnitError("systemctl: listing units is not supported by the lab's stand-in")
    verb, names = positional[0], [unit_name(n) for n in positional[1:]]
    if verb == "daemon-reload":
        return daemon_reload()
    if not names:
        raise UnitError("Too few arguments.")
    for name in names:
        if not name.endswith(".service"):
            raise UnitError(f"Unit {name} not found.", EXIT_NOT_FOUND)
    os.makedirs(STATE_DIR, exist_ok=True)
    os.makedirs(LOG_DIR, exist_ok=True)
    if verb in UNIT_VERBS:
        for name in names:
            try:
                UNIT_VERBS[verb](name, opts)
            except UnitError as e:
                message = str(e)
                if e.code == EXIT_NOT_FOUND and not message.startswith("Failed"):
                    message = f"Failed to {verb} {name}: {message}"
                raise UnitError(message, e.code) from None
        return 0
    if verb in ("is-active", "is-failed", "is-enabled"):
        return is_state(names, opts, verb)
    if verb == "status":
        return status(names, opts)
    if verb == "show":
        return show(names, opts)
    if verb == "kill":
        return kill(names, opts)
    if verb == "reset-failed":
        for name in names:
            if read_state(name)["state"] == "failed" and not supervisor_alive(name):
                write_state(name, dict(read_state(name), state="inactive", substate="dead",
                                       result="success"))
        return 0
    raise UnitError(f"Unknown command verb {verb}.")


def journalctl(argv: list[str]) -> int:
    """``journalctl -u UNIT [-n N]``: the unit's log lines, oldest first."""
    units, lines = [], None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-u", "--unit"):
            units.append(unit_name(args.pop(0)))
        elif arg.startswith("--unit="):
            units.append(unit_name(arg.split("=", 1)[1]))
        elif arg.startswith("-u") and len(arg) > 2:
            units.append(unit_name(arg[2:]))
        elif arg in ("-n", "--lines"):
            lines = int(args.pop(0)) if args and args[0].isdigit() else 10
        elif arg.startswith("--lines="):
            lines = int(arg.split("=", 1)[1])
        elif arg.startswith("-n") and arg[2:].isdigit():
            lines = int(arg[2:])
        # Other options (--no-pager, -e, -x, -b, -q, ...) change nothing here.
    if not units:
        raise UnitError("journalctl: the lab's stand-in needs -u UNIT")
    merged = [line for name in units for line in tail_log(name, None)]
    if len(units) > 1:
        merged.sort(key=lambda line: line.split(" ", 1)[0])  # by timestamp, stable
    shown = merged if lines is None else merged[-lines:] if lines else []
    print("\n".join(shown) if shown else "-- No entries --")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["journalctl"]:
            return journalctl(argv[1:])
        return systemctl(argv)
    except UnitError as e:
        print(e, file=sys.stderr)
        return e.code
    except (OSError, ValueError) as e:
        print(f"systemctl: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
