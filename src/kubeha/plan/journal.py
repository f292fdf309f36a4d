"""The journal: a local SQLite file saying what each run of each operation did.

Tables: ``operations`` (the plan JSON, once per operation id), ``runs`` (one row per
apply, resume or rollback: when, by which process on which machine, how it ended),
``steps`` (one row per attempt at a step: started, finished, outcome, retries, a one-line
message and where its backups are) and ``probes`` (the availability probe's summary of a
run, as JSON, and where its timeline file is). Each write is one transaction, so a crash
leaves the row as it was before or after, never half-written; an attempt still without an
outcome is one a crash or a kill cut short.

The journal holds plan JSON (which refuses secrets) and redacted one-line messages, never
file contents or credentials. The file is created 0600 in a 0700 directory.

``lock`` keeps two kubeha processes on this machine from running the same operation: an
flock on a file beside the journal, which the kernel releases when the holder dies, even
by SIGKILL, so a crash never leaves a stale lock.

A journal file deleted (or replaced) while a run has it open is written back from the copy
the run still has open before its next write: SQLite would refuse that write ("readonly
database"), and the record of what the run did would be lost with the process.
``check_on_disk`` tells the engine, which then stops before the next step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from kubeha.plan.errors import JournalError, OperationLocked, PlanError, UnknownOperation
from kubeha.plan.model import Plan
from kubeha.plan.secrets import one_line

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    operation_id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id TEXT NOT NULL REFERENCES operations(operation_id),
    action TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    outcome TEXT,
    message TEXT,
    pid INTEGER NOT NULL,
    operator_host TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    record_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    operation_id TEXT NOT NULL REFERENCES operations(operation_id),
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    outcome TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    backups TEXT NOT NULL DEFAULT '[]',
    UNIQUE (operation_id, step_id, attempt)
);
CREATE TABLE IF NOT EXISTS observations (
    record_id INTEGER PRIMARY KEY REFERENCES steps(record_id),
    look_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (
    run_id INTEGER PRIMARY KEY REFERENCES runs(run_id),
    operation_id TEXT NOT NULL REFERENCES operations(operation_id),
    summary_json TEXT NOT NULL,
    timeline_path TEXT
);
"""


class StepOutcome(str, Enum):
    DONE = "done"
    FAILED = "failed"  # failed, and not rolled back (irreversible, or the rollback failed too)
    ROLLED_BACK = "rolled-back"
    SKIPPED_ALREADY_DONE = "skipped-already-done"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"


class RunOutcome(str, Enum):
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ROLLED_BACK = "rolled-back"  # a rollback run that undid everything it could
    ROLLBACK_STOPPED = "rollback-stopped"


class RunAction(str, Enum):
    APPLY = "apply"
    RESUME = "resume"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class RunRecord:
    run_id: int
    operation_id: str
    action: RunAction
    started: datetime
    finished: datetime | None
    outcome: RunOutcome | None  # None: still running, or the process died
    message: str | None
    pid: int
    operator_host: str


@dataclass(frozen=True)
class StepRecord:
    record_id: int
    run_id: int
    operation_id: str
    step_id: str
    attempt: int
    started: datetime
    finished: datetime | None
    outcome: StepOutcome | None  # None: cut short by a crash or a kill
    retries: int
    message: str
    backups: tuple[str, ...]


@dataclass(frozen=True)
class ProbeRun:
    """The availability probe's summary of one run (a JSON object) and its timeline file."""

    run_id: int
    operation_id: str
    summary: dict[str, Any]
    timeline_path: str | None


def default_journal_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kubeha" / "journal.sqlite"


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, None if there is none: which file the path names."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Journal:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_journal_path()
        self._written_back: tuple[Path, Path] | None = None  # (from, to), since check_on_disk last said so
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Created 0600 before SQLite opens it, so it is never readable by others, not even briefly.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
            self._db = self._connect(self.path)
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise JournalError(f"cannot open the journal {self.path}: {e}") from e
        self._opened = _file_identity(self.path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def check_on_disk(self) -> tuple[Path, Path] | None:
        """(the journal's path, where it was written back) if its file was deleted or replaced
        while open since the last call; None when it stayed in place."""
        self._keep_on_disk()
        written, self._written_back = self._written_back, None
        return written

    def _keep_on_disk(self) -> None:
        """Write the open copy back to ``path`` if the file there is gone (beside it if another
        file took its place: that one is not ours to overwrite), and go on with that file."""
        if _file_identity(self.path) == self._opened:
            return
        target = self.path if not self.path.exists() else self.path.with_name(f"{self.path.name}.pid{os.getpid()}")
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            copy = sqlite3.connect(target)
            try:
                self._db.backup(copy)
            finally:
                copy.close()
            reopened = self._connect(target)
        except (OSError, sqlite3.Error) as e:
            raise JournalError(f"the journal {self.path} was deleted or replaced during the run and cannot be "
                               f"written back to {target}: {e}") from e
        self._db.close()
        self._written_back = (self._written_back[0] if self._written_back else self.path, target)
        self._db, self.path, self._opened = reopened, target, _file_identity(target)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is stored, or none."""
        self._keep_on_disk()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise JournalError(f"cannot write the journal {self.path}: {e}") from e

    def _read(self, sql: str, *params: object) -> list[sqlite3.Row]:
        try:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()
        except sqlite3.Error as e:
            raise JournalError(f"cannot read the journal {self.path}: {e}") from e

    @contextlib.contextmanager
    def lock(self, operation_id: str) -> Iterator[None]:
        """Hold the operation for this process; refuse if another process holds it."""
        locks = self.path.parent / "locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(locks / f"{operation_id}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise OperationLocked(
                    f"operation {operation_id} is being run by another kubeha process (pid {holder}) "
                    f"on this machine; wait for it or stop it") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def record_plan(self, plan: Plan) -> None:
        """Store the plan once; the same id with a different plan is refused."""
        stored = self._read("SELECT plan_json FROM operations WHERE operation_id = ?", plan.operation_id)
        if stored:
            if Plan.model_validate_json(stored[0]["plan_json"]) != plan:
                raise PlanError(f"the journal already holds a different plan for {plan.operation_id}; "
                                f"make a new plan (it gets a new operation id)")
            return
        with self._write() as db:
            db.execute("INSERT INTO operations VALUES (?, ?, ?, ?)",
                       (plan.operation_id, plan.operation, plan.to_json(), plan.created.isoformat()))

    def plan(self, operation_id: str) -> Plan:
        rows = self._read("SELECT plan_json FROM operations WHERE operation_id = ?", operation_id)
        if not rows:
            raise UnknownOperation(f"the journal {self.path} knows no operation {operation_id}")
        return Plan.from_json(rows[0]["plan_json"], f"the journaled plan of {operation_id}")

    def operation_ids(self) -> list[str]:
        return [row["operation_id"] for row in self._read("SELECT operation_id FROM operations ORDER BY created")]

    def start_run(self, operation_id: str, action: RunAction) -> int:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (operation_id, action, started, pid, operator_host) VALUES (?, ?, ?, ?, ?)",
                (operation_id, action.value, _now(), os.getpid(), socket.gethostname()))
        return int(cursor.lastrowid)

    def finish_run(self, run_id: int, outcome: RunOutcome, message: str = "") -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET finished = ?, outcome = ?, message = ? WHERE run_id = ?",
                       (_now(), outcome.value, one_line(message), run_id))

    def start_step(self, run_id: int, operation_id: str, step_id: str) -> int:
        with self._write() as db:
            (attempt,) = db.execute(
                "SELECT COUNT(*) + 1 FROM steps WHERE operation_id = ? AND step_id = ?",
                (operation_id, step_id)).fetchone()
            cursor = db.execute(
                "INSERT INTO steps (run_id, operation_id, step_id, attempt, started) VALUES (?, ?, ?, ?, ?)",
                (run_id, operation_id, step_id, attempt, _now()))
        return int(cursor.lastrowid)

    def finish_step(self, record_id: int, outcome: StepOutcome, *, retries: int = 0, message: str = "",
                    backups: list[str] | tuple[str, ...] = ()) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE steps SET finished = ?, outcome = ?, retries = ?, message = ?, backups = ? "
                "WHERE record_id = ?",
                (_now(), outcome.value, retries, one_line(message), json.dumps(list(backups)), record_id))

    def record_observation(self, record_id: int, look: Mapping[str, Any]) -> None:
        """What the fresh look before step attempt ``record_id`` saw (a JSON object of names and
        states, never secrets): ``kubeha audit`` compares it with the simulator's model."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO observations (record_id, look_json) VALUES (?, ?)",
                       (record_id, json.dumps(dict(look), sort_keys=True)))

    def observations(self, operation_id: str) -> dict[int, dict[str, Any]]:
        """Each step attempt's observation, by record id."""
        return {row["record_id"]: json.loads(row["look_json"]) for row in self._read(
            "SELECT o.record_id, o.look_json FROM observations o JOIN steps s ON s.record_id = o.record_id "
            "WHERE s.operation_id = ?", operation_id)}

    def runs(self, operation_id: str) -> list[RunRecord]:
        return [
            RunRecord(row["run_id"], row["operation_id"], RunAction(row["action"]), _time(row["started"]),
                      _time(row["finished"]), RunOutcome(row["outcome"]) if row["outcome"] else None,
                      row["message"], row["pid"], row["operator_host"])
            for row in self._read("SELECT * FROM runs WHERE operation_id = ? ORDER BY run_id", operation_id)
        ]

    def steps(self, operation_id: str) -> list[StepRecord]:
        """Every attempt at every step of the operation, oldest first."""
        return [
            StepRecord(row["record_id"], row["run_id"], row["operation_id"], row["step_id"], row["attempt"],
                       _time(row["started"]), _time(row["finished"]),
                       StepOutcome(row["outcome"]) if row["outcome"] else None, row["retries"],
                       row["message"], tuple(json.loads(row["backups"])))
            for row in self._read("SELECT * FROM steps WHERE operation_id = ? ORDER BY record_id", operation_id)
        ]

    def record_probe(self, run_id: int, operation_id: str, summary: Mapping[str, Any],
                     timeline_path: Path | str | None = None) -> None:
        """Store the probe's summary of run ``run_id`` (a JSON object; once per run)."""
        try:
            text = json.dumps(dict(summary), sort_keys=True)
        except (TypeError, ValueError) as e:
            raise JournalError(f"the probe summary of run {run_id} is not JSON: {e}") from e
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?)",
                       (run_id, operation_id, text, str(timeline_path) if timeline_path is not None else None))

    def probes(self, operation_id: str) -> list[ProbeRun]:
        """The probe summaries of the operation's runs, oldest run first."""
        return [
            ProbeRun(row["run_id"], row["operation_id"], json.loads(row["summary_json"]), row["timeline_path"])
            for row in self._read("SELECT * FROM probes WHERE operation_id = ? ORDER BY run_id", operation_id)
        ]
