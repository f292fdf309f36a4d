"""The report as a person sees it: rendered by Debian's Chromium, headless, the plot is on
the screenshot (its area is not blank: the series' colours and the failure's red are there)."""

from __future__ import annotations

import shutil
import subprocess

from PIL import Image

from kubeha.report import operation_report, render_report_html

from helpers.reports import PLAN, journal_with_a_run

CHROMIUM = "/usr/bin/chromium"
PLOT_BACKGROUND = (250, 250, 250)  # plot.py's #fafafa
SERIES = {"vip": (31, 119, 180), "node-proxy": (44, 160, 44)}
FAILURE = (214, 39, 40)


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour))


def screenshot(html_file, png_file, profile) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: scripts/setup.sh --tests installs Debian's chromium"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--window-size=1280,1400", f"--screenshot={png_file}", html_file.as_uri()],
        check=True, capture_output=True, timeout=120)


def test_chromium_shows_the_probe_plot(tmp_path):
    with journal_with_a_run(tmp_path) as journal:
        html = render_report_html(operation_report(journal, PLAN.operation_id, check_error="--no-check"))
    page = tmp_path / "report.html"
    page.write_text(html)
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "profile")

    image = Image.open(png).convert("RGB")
    width, height = image.size
    pixels = image.load()
    background = [(x, y) for y in range(0, height, 2) for x in range(0, width, 2) if pixels[x, y] == PLOT_BACKGROUND]
    assert background, "no plot area on the screenshot"
    left, right = min(x for x, _ in background), max(x for x, _ in background)
    top, bottom = min(y for _, y in background), max(y for _, y in background)
    assert right - left > 600 and bottom - top > 150, (left, top, right, bottom)
    inside = [pixels[x, y] for y in range(top, bottom + 1) for x in range(left, right + 1)]
    for name, colour in SERIES.items():
        assert sum(near(p, colour) for p in inside) > 300, f"the {name} series is not on the plot"
    assert sum(near(p, FAILURE) for p in inside) > 10, "the failed request is not marked"
    assert sum(p != PLOT_BACKGROUND for p in inside) > 0.02 * len(inside)
