"""The HTML report from a real journal file and timeline (no host): what it shows, and that
what hosts said cannot break out of it."""

from __future__ import annotations

import re

from kubeha.checks import CheckResult, Status
from kubeha.plan import Journal, RunAction, StepOutcome
from kubeha.report import ProbeTotals, StepMark, operation_report, probe_plot_svg, probe_totals, render_report_html
from kubeha.report.plot import WIDTH

from helpers.reports import PLAN, journal_with_a_run, timeline


def test_the_report_shows_steps_runs_probe_plot_check_and_backups(tmp_path):
    checks = [CheckResult("etcd-quorum", Status.PASS, "etcd", "3 of 3 voters healthy"),
              CheckResult("vip-holder", Status.WARN, "10.0.0.10", "held by spare1")]
    with journal_with_a_run(tmp_path) as journal:
        html = render_report_html(operation_report(journal, PLAN.operation_id, checks=checks))
    assert "<script>" not in html and "&lt;script&gt;" in html  # what a host said is text
    assert html.count("<svg") == 1 and "<polyline" in html
    for said in ("copy-master-files-spare1", "rolled-back", "not run", "master1=spare1", "https://10.0.0.10:6443",
                 "spare1:/var/backups/kubeha/x.copy-master-files-spare1", "3 of 3 voters healthy", "held by spare1",
                 "ConnectTimeout: timed out"):
        assert said in html, said
    row = re.search(r"<tr><td class=\"num\">2</td>.*?</tr>", html, re.S).group(0)
    assert '<td>spare1</td><td class="num">1</td><td class="num">2</td>' in row  # one attempt, two retries
    assert "src=" not in html and "href=" not in html  # self-contained


def test_a_report_without_a_check_or_a_run_says_so(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.record_plan(PLAN)
        html = render_report_html(operation_report(journal, PLAN.operation_id, check_error="--no-check"))
    assert "Not run yet" in html and "No check: --no-check" in html and "<svg" not in html


def test_the_plot_keeps_one_point_per_pixel_column_and_every_failure():
    records = timeline(1000.0, 600)  # 24 000 records
    svg = probe_plot_svg(records, [StepMark(1100.0, "a-step", "done"), StepMark(1200.0, "b-step", "failed")],
                         1000.0, 1600.0)
    points = [m.group(1).split() for m in re.finditer(r'points="([^"]*)"', svg)]
    assert len(points) == 2 and all(len(p) <= WIDTH for p in points)
    assert svg.count("ConnectTimeout") == 1 and "a-step (done)" in svg and "b-step (failed)" in svg
    assert len(svg) < 60_000


def test_no_key_or_token_reaches_the_report(tmp_path):
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB3x\n-----END EC PRIVATE KEY-----"
    with journal_with_a_run(tmp_path) as journal:
        run_id = journal.start_run(PLAN.operation_id, RunAction.RESUME)
        record = journal.start_step(run_id, PLAN.operation_id, "remove-member-master1")
        journal.finish_step(record, StepOutcome.FAILED, message=f"bad key {pem} and Authorization: Bearer abc.def.ghi")
        html = render_report_html(operation_report(journal, PLAN.operation_id))
    assert "MHcCAQEEIB3x" not in html and "abc.def.ghi" not in html


def test_probe_totals_add_up_every_run_and_say_when_writes_could_not_be_read_back():
    run = {"paths": [{"path": "vip", "requests": 10, "failures": 2, "failures_after_retry": 1, "longest_gap_ms": 900.0},
                     {"path": "lb/a", "requests": 5, "failures": 0, "failures_after_retry": 0, "longest_gap_ms": 50.0}],
           "etcd": {"writes": 3, "acknowledged": 3, "lost": [7]}}
    unread = {"paths": [{"path": "vip", "requests": 1, "failures": 0, "failures_after_retry": 0,
                         "longest_gap_ms": 1200.0}], "etcd": {"writes": 1, "acknowledged": 1, "lost": None}}
    assert probe_totals([run, run]) == ProbeTotals(30, 4, 2, 900.0, 2)
    assert probe_totals([run, unread]) == ProbeTotals(16, 2, 1, 1200.0, None)
    assert probe_totals([]) == ProbeTotals(0, 0, 0, None, 0)
