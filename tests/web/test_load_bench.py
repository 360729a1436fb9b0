"""benchmarks/load.py end to end with tiny numbers: the real app in a child process, gradio_client users,
Markdown tables, no failed requests. No assertions on time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from captioner.web import cli
from tests.helpers.app import app, make_app_model
from tests.helpers.paths import ROOT


def test_max_batch_size_comes_from_the_argument_then_the_environment(monkeypatch, tiny_model_dir):
    monkeypatch.delenv("CAPTIONER_MAX_BATCH", raising=False)
    assert cli.max_batch_size() == cli.MAX_BATCH_SIZE
    monkeypatch.setenv("CAPTIONER_MAX_BATCH", "1")
    assert cli.max_batch_size() == 1 and cli.max_batch_size(4) == 4
    for bad in ("0", "-3", "eight"):
        monkeypatch.setenv("CAPTIONER_MAX_BATCH", bad)
        with pytest.raises(ValueError, match="at least 1"):
            cli.max_batch_size()
    built = app.build_app(tiny_model_dir, batch_size=1, examples_dir=tiny_model_dir)  # no photos there
    assert built.state.shared.max_batch_size == 1
    built.state.close()


@pytest.mark.stress
@pytest.mark.slow
def test_load_benchmark_runs_and_every_request_is_answered(tmp_path_factory, tmp_path):
    model = make_app_model(tmp_path_factory.getbasetemp() / "app-model")
    report = tmp_path / "load.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--quick", "--model", str(model),
         "--users", "4", "--requests", "2", "--baseline", "2", "--soak", "20", "--batch-sizes", "1,8",
         "--max-seconds", "240", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for title in ("### Throughput and latency: 4 concurrent users x 2 requests",
                  "### Does batching slow the server down?", "### Soak: 20 of 20 requests",
                  "**Recommended max batch size:**", "**Errors: 0**"):
        assert title in out, out
    assert "| 4 users x 2, 1 round | 1 | 4 | 8/8 | 0 |" in out and "| 4 users x 2, 1 round | 8 | 4 | 8/8 | 0 |" in out

    data = json.loads(report.read_text())
    assert data["errors"] == [] and data["skipped_requests"] == 0 and data["skipped_phases"] == []
    loads = {p["batch_size"]: p for p in data["phases"] if p["users"] == 4 and not p["name"].startswith("soak")}
    assert loads[1]["ok"] == loads[8]["ok"] == 8
    soak = next(p for p in data["phases"] if p["name"].startswith("soak"))
    assert soak["ok"] == 20 and soak["rss_mib"][0][0] == 0 and soak["rss_mib"][-1][0] == 20
    assert all(rss > 50 for _, rss in soak["rss_mib"])  # the app process itself, not a stray pid
    assert data["recommended_batch_size"] in (1, 8)
