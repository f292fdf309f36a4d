"""The probe's summary maths on synthetic timelines: retries, gaps, percentiles, lost writes."""

from __future__ import annotations

import pytest

from kubeha.cli.probe import seconds
from kubeha.errors import InputError
from kubeha.probe import (
    EtcdWritesSummary, ProbeRecord, longest_gap, lost_writes, percentile, summarize, summarize_path,
)


def ok(ts: float, path: str = "vip", latency_ms: float = 10.0, retry: bool = False) -> ProbeRecord:
    return ProbeRecord(ts=ts, path=path, ok=True, status=200, latency_ms=latency_ms, retry=retry)


def failed(ts: float, path: str = "vip", retry: bool = False) -> ProbeRecord:
    return ProbeRecord(ts=ts, path=path, ok=False, latency_ms=1.0, error="ConnectError: refused", retry=retry)


def test_a_healthy_timeline_has_no_failures_and_gaps_of_one_interval():
    records = [ok(100 + i * 0.05) for i in range(20)]
    summary = summarize(records, started=100.0, ended=101.0)
    vip = summary.path("vip")
    assert (vip.requests, vip.failures, vip.failures_after_retry) == (20, 0, 0)
    assert vip.longest_gap_ms == pytest.approx(50.0)
    assert summary.healthy


def test_a_failure_whose_retry_succeeds_is_ok_with_one_retry():
    records = [ok(100.0), failed(100.05), ok(100.052, retry=True), ok(100.1)]
    vip = summarize_path("vip", records, 100.0, 100.15)
    assert (vip.requests, vip.failures, vip.failures_after_retry) == (3, 1, 0)


def test_a_failure_whose_retry_fails_counts_after_retry():
    records = [ok(100.0), failed(100.05), failed(100.051, retry=True), ok(100.1)]
    vip = summarize_path("vip", records, 100.0, 100.15)
    assert (vip.requests, vip.failures, vip.failures_after_retry) == (3, 1, 1)


def test_a_failure_without_its_retry_counts_after_retry():
    # the run stopped between a failure and its retry
    vip = summarize_path("vip", [ok(100.0), failed(100.05)], 100.0, 100.06)
    assert (vip.failures, vip.failures_after_retry) == (1, 1)


def test_the_longest_gap_spans_an_outage_between_successes():
    records = ([ok(100 + i * 0.05) for i in range(10)]
               + [failed(100.5 + i * 0.05) for i in range(24)]
               + [ok(101.7 + i * 0.05) for i in range(6)])
    lb = summarize_path("vip", records, 100.0, 102.0)
    # last success done at 100.45 + 10 ms, next at 101.7 + 10 ms
    assert lb.longest_gap_ms == pytest.approx(1250.0)
    assert lb.failures == lb.failures_after_retry == 24


def test_the_run_edges_count_as_gaps():
    assert longest_gap([], 10.0, 12.5) == pytest.approx(2.5)
    assert longest_gap([10.2], 10.0, 13.0) == pytest.approx(2.8)
    assert longest_gap([10.5, 11.0], 10.0, 11.2) == pytest.approx(0.5)


def test_latency_percentiles_count_only_successes():
    records = [ok(100 + i, latency_ms=float(i + 1)) for i in range(100)] + [failed(300)]
    vip = summarize_path("vip", records, 100.0, 301.0)
    assert (vip.p50_ms, vip.p99_ms) == (50.0, 99.0)
    assert summarize_path("vip", [failed(1)], 0.0, 2.0).p50_ms is None


def test_percentile_is_nearest_rank():
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([], 0.5) is None


def test_paths_are_summarized_apart_in_order_of_appearance():
    records = [ok(1.0, "vip"), failed(1.0, "lb/master3"), ok(1.01, "vip"), failed(1.01, "lb/master3", retry=True)]
    summary = summarize(records, 1.0, 1.1)
    assert [p.path for p in summary.paths] == ["vip", "lb/master3"]
    assert summary.path("lb/master3").failures_after_retry == 1
    assert summary.path("vip").failures == 0
    assert not summary.healthy


def test_lost_writes_are_acknowledged_ones_not_read_back():
    assert lost_writes([0, 1, 2, 3], [0, 1, 2, 3, 4]) == ()  # 4: written, its answer lost: not lost
    assert lost_writes([0, 1, 2, 3], [0, 3]) == (1, 2)


def test_lost_or_unverified_writes_make_a_run_unhealthy():
    records = [ok(1.0)]
    assert summarize(records, 1.0, 2.0, etcd=EtcdWritesSummary(4, 4, lost=())).healthy
    assert not summarize(records, 1.0, 2.0, etcd=EtcdWritesSummary(4, 4, lost=(2,))).healthy
    assert not summarize(records, 1.0, 2.0, etcd=EtcdWritesSummary(4, 4, lost=None)).healthy


def test_the_summary_is_json():
    summary = summarize([ok(1.0)], 1.0, 2.0, etcd=EtcdWritesSummary(1, 1, lost=()))
    assert summary.as_json()["paths"][0]["path"] == "vip"
    assert summary.as_json()["etcd"] == {"writes": 1, "acknowledged": 1, "lost": ()}


@pytest.mark.parametrize("text, expected", [("50ms", 0.05), ("30s", 30.0), ("2m", 120.0), ("1.5", 1.5)])
def test_durations(text, expected):
    assert seconds(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "0s", "5 minutes", "-1s"])
def test_bad_durations_are_input_errors(text):
    with pytest.raises(InputError):
        seconds(text)


def test_a_refused_read_is_recorded_with_what_the_apiserver_said():
    import httpx

    from kubeha.probe.probe import RefusedAnswer, _http_path

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"kind": "Status", "message": "etcd: no leader", "code": 503})

    path = _http_path("vip", "https://vip", httpx.Client(transport=httpx.MockTransport(answer),
                                                          base_url="https://vip"), keep_alive=True)
    try:
        path.request()
    except RefusedAnswer as e:
        assert (e.status, str(e)) == (503, "etcd: no leader")
    else:
        raise AssertionError("a 503 must not count as an answer")
