"""The HTML report: self-contained, one SVG per chart, and numbers that come from the result (point counts,
axis ranges), checked by parsing the HTML here; plus the loss trace and the chart axes it relies on."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from engine_fixtures import blobs, trained_classifier

import onnx_dns
from onnx_dns.html_report import compress_report, sweep_report
from onnx_dns.svg import Axis, Series, line_chart, number
from onnx_dns.trace import LossTrace

TRAIN = {"iterations": 90, "batch_size": 32, "eval_every": 30, "lr": 0.02, "threads": 1}


class Charts(HTMLParser):
    """The svgs of a page with their polylines (label -> point count), x tick labels and bars; and every
    attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict] = []
        self.external: list[str] = []
        self._tick = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href", "xlink:href", "data", "action"):
            if key in attrs:
                self.external.append(f"{tag} {key}={attrs[key]}")
        if tag == "svg":
            self.svgs.append({"title": attrs.get("aria-label"), "lines": {}, "xticks": [], "bars": 0})
        elif tag == "polyline":
            self.svgs[-1]["lines"][attrs["data-label"]] = len(attrs["points"].split())
        elif tag == "rect" and attrs.get("class") == "bar":
            self.svgs[-1]["bars"] += 1
        self._tick = tag == "text" and attrs.get("class") == "xtick"

    def handle_data(self, data):
        if self._tick:
            self.svgs[-1]["xticks"].append(data)
            self._tick = False


def parse(html: str) -> Charts:
    charts = Charts()
    charts.feed(html)
    return charts


def self_contained(html: str) -> bool:
    return not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I) and not parse(html).external


def test_the_self_containment_check_catches_external_resources():
    assert self_contained("<html><body><svg></svg></body></html>")
    assert not self_contained('<html><img src="logo.png"></html>')
    assert not self_contained('<link rel="stylesheet" href="style.css">')
    assert not self_contained("<style>@import url(https://cdn.example.com/x.css)</style>")


@pytest.fixture(scope="module")
def case():
    x, y = blobs(360, 6, 3, seed=21)
    vx, vy = blobs(150, 6, 3, seed=22)
    return trained_classifier(x, y, 3, hidden=24), {"x": x, "labels": y}, {"x": vx, "labels": vy}


def test_compress_report_charts_come_from_the_result(case):
    model, train, val = case
    trace = LossTrace()
    result = onnx_dns.compress(model, train, val=val, target="4x", progress=trace, **TRAIN)
    html = compress_report(result, trace)
    charts = parse(html)
    assert self_contained(html)
    assert [s["title"] for s in charts.svgs] == ["training loss", "validation top-1",
                                                 "compression (params / nonzeros)", "kept weights per layer (%)"]
    loss, score, compression, kept = charts.svgs
    assert len(result.history) == 3
    assert score["lines"]["training"] == len(result.history)
    assert loss["lines"]["training"] == len(trace.runs[0].points) == TRAIN["iterations"]
    assert compression["xticks"][0] == "1" and compression["xticks"][-1] == "90"
    assert kept["bars"] == 2 * len(result.layers_before)
    assert f"{result.compression:.1f}x" in html


def test_sweep_report_axis_shows_the_real_compression_range(case):
    model, train, val = case
    trace = LossTrace()
    sweep = onnx_dns.sweep(model, train, val=val, targets="2x,3x,5x", max_accuracy_drop=1.0, progress=trace,
                           **TRAIN)
    sensitivity = onnx_dns.sensitivity(model, train, val=val, sparsities=[0.5, 0.8, 0.9])
    html = sweep_report(sweep, trace, sensitivity)
    charts = parse(html)
    assert self_contained(html)
    curve = charts.svgs[0]
    assert curve["lines"]["compressed"] == 3
    reached = [p.compression for p in sweep.points]
    assert curve["xticks"][0] == number(min(reached)) and curve["xticks"][-1] == number(max(reached))
    assert set(curve["lines"]) == {"compressed", "original", "bound"}
    loss = next(s for s in charts.svgs if s["title"] == "training loss")
    assert loss["lines"] == {"2x": 90, "3x": 90, "5x": 90}
    sens = charts.svgs[-1]
    assert {k: v for k, v in sens["lines"].items() if k != "original"} == {"fc1": 3, "fc2": 3}


def test_loss_trace_averages_windows_and_forgets_rolled_back_steps():
    seen = []
    trace = LossTrace(seen.append, max_points=10)
    trace({"event": "start", "iteration": 0, "iterations": 1000})
    for i in range(1, 501):
        trace({"event": "step", "iteration": i, "iterations": 1000, "loss": float(i), "compression": 2.0})
    trace({"event": "rollback", "iteration": 300, "lr_scale": 0.5})
    assert len(seen) == 502  # every event is forwarded
    points = trace.runs[0].points
    assert [p[0] for p in points] == [100, 200, 300]
    assert points[0][1] == pytest.approx(50.5) and points[2][1] == pytest.approx(250.5)


def test_axis_maps_log_and_linear_values_and_keeps_the_ends():
    log = Axis(1.0, 100.0, 0.0, 200.0, log=True)
    assert log(10.0) == pytest.approx(100.0)
    assert log.ticks()[0] == 1.0 and log.ticks()[-1] == 100.0
    linear = Axis(3.0, 7.0, 0.0, 100.0)
    assert linear(5.0) == pytest.approx(50.0)
    svg = line_chart("t", [Series("a", [(1, 2), (2, 3), (3, 1)])], "x", "y")
    assert parse(svg).svgs[0]["lines"] == {"a": 3}


def test_cli_compress_writes_the_html_report_and_refuses_the_model_path(case, tmp_path):
    import numpy as np
    import onnx
    from click.testing import CliRunner

    from cli.main import main

    model, train, val = case
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "t.npz", **train)
    np.savez(tmp_path / "v.npz", **val)
    args = ["compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--data", tmp_path / "t.npz", "--val",
            tmp_path / "v.npz", "--iterations", "40", "--eval-every", "20", "--target", "3x", "-q"]
    ok = CliRunner().invoke(main, [str(a) for a in [*args, "--report-html", tmp_path / "r.html"]])
    assert ok.exit_code == 0, (ok.stdout, ok.stderr)
    html = (tmp_path / "r.html").read_text()
    assert self_contained(html) and parse(html).svgs[1]["lines"]["training"] == 2
    clash = CliRunner().invoke(main, [str(a) for a in [*args, "--report-html", tmp_path / "out.onnx"]])
    assert clash.exit_code == 7 and "--report-html" in clash.stderr
