"""The journal file: private, transactional rows, one-line redacted messages."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import datetime, timezone

import pytest

from kubeha.plan import Change, ChangeKind, Journal, JournalError, Plan, ProbeRun, RunAction, RunOutcome, Step, StepOutcome
from kubeha.plan.journal import SCHEMA, default_journal_path

PLAN = Plan(operation="toy", operation_id="toy-1", created=datetime(2024, 5, 1, tzinfo=timezone.utc),
            inventory_digest="sha256:toy",
            steps=(Step(id="one", kind="set-key", title="set a",
                        changes=(Change(kind=ChangeKind.FILE, target="/etc/a", after="sha256:1"),)),))


def test_the_journal_is_private(tmp_path):
    path = tmp_path / "state" / "kubeha" / "journal.sqlite"
    Journal(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_default_path_follows_xdg_state_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_journal_path() == tmp_path / "kubeha" / "journal.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert str(default_journal_path()).endswith(".local/state/kubeha/journal.sqlite")


def test_rows_say_when_how_and_why(tmp_path):
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_plan(PLAN)
        run_id = journal.start_run("toy-1", RunAction.APPLY)
        record_id = journal.start_step(run_id, "toy-1", "one")
        (unfinished,) = journal.steps("toy-1")
        assert (unfinished.outcome, unfinished.finished) == (None, None)
        journal.finish_step(record_id, StepOutcome.ROLLED_BACK, retries=2,
                            message="etcd said\n  no: token: abcdefghijklmnop", backups=["m1:/var/lib/kubeha/backups/toy-1"])
        journal.finish_run(run_id, RunOutcome.FAILED, "step one failed")

    with Journal(tmp_path / "j.sqlite") as reopened:
        (record,) = reopened.steps("toy-1")
        assert (record.attempt, record.outcome, record.retries) == (1, StepOutcome.ROLLED_BACK, 2)
        assert record.message == "etcd said no: [redacted]"
        assert record.backups == ("m1:/var/lib/kubeha/backups/toy-1",)
        assert record.started <= record.finished
        (run,) = reopened.runs("toy-1")
        assert (run.action, run.outcome, run.message) == (RunAction.APPLY, RunOutcome.FAILED, "step one failed")
        assert reopened.plan("toy-1") == PLAN


def test_an_unknown_operation_is_said(tmp_path):
    with Journal(tmp_path / "j.sqlite") as journal, pytest.raises(JournalError, match="knows no operation nope"):
        journal.plan("nope")


def test_a_journal_that_cannot_be_made_is_one_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match="cannot open the journal"):
        Journal(tmp_path / "file" / "journal.sqlite")


def test_probe_summaries_are_stored_per_run(tmp_path):
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_plan(PLAN)
        first = journal.start_run("toy-1", RunAction.APPLY)
        second = journal.start_run("toy-1", RunAction.RESUME)
        journal.record_probe(second, "toy-1", {"healthy": True, "paths": []}, tmp_path / "run-2.jsonl")
        journal.record_probe(first, "toy-1", {"healthy": False, "paths": [{"path": "vip"}]})
    with Journal(tmp_path / "j.sqlite") as reopened:
        assert reopened.probes("toy-1") == [
            ProbeRun(first, "toy-1", {"healthy": False, "paths": [{"path": "vip"}]}, None),
            ProbeRun(second, "toy-1", {"healthy": True, "paths": []}, str(tmp_path / "run-2.jsonl"))]
        assert reopened.probes("other") == []
        with pytest.raises(JournalError, match="not JSON"):
            reopened.record_probe(first, "toy-1", {"when": object()})


def test_a_journal_from_before_probes_gains_the_table(tmp_path):
    path = tmp_path / "j.sqlite"
    old_schema = SCHEMA.split("CREATE TABLE IF NOT EXISTS probes")[0]
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
    with Journal(path) as journal:
        journal.record_plan(PLAN)
        run_id = journal.start_run("toy-1", RunAction.APPLY)
        journal.record_probe(run_id, "toy-1", {"healthy": True})
        assert [p.run_id for p in journal.probes("toy-1")] == [run_id]


def test_a_journal_deleted_while_open_is_written_back_with_every_row(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        journal.record_plan(PLAN)
        run_id = journal.start_run("toy-1", RunAction.APPLY)
        assert journal.check_on_disk() is None
        path.unlink()
        journal.start_step(run_id, "toy-1", "one")  # SQLite alone would refuse: "readonly database"
        assert journal.check_on_disk() == (path, path)
        assert journal.check_on_disk() is None  # said once
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Journal(path) as reopened:
        assert reopened.plan("toy-1") == PLAN
        assert [(r.run_id, r.step_id) for r in reopened.steps("toy-1")] == [(run_id, "one")]


def test_a_journal_replaced_while_open_is_kept_beside_the_other_file(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        journal.record_plan(PLAN)
        path.unlink()
        Journal(path).close()  # another, empty journal in its place: not ours to overwrite
        assert journal.check_on_disk() == (path, kept := path.with_name(f"j.sqlite.pid{os.getpid()}"))
        journal.start_run("toy-1", RunAction.APPLY)
    with Journal(kept) as ours, Journal(path) as theirs:
        assert [r.action for r in ours.runs("toy-1")] == [RunAction.APPLY]
        assert theirs.operation_ids() == []
