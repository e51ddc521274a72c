"""`eksinfer bench` end to end through the real entry point, against the fake server in a thread."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from eksinfer.bench.fakeserver import FakeBackend, start
from eksinfer.cli.main import run
from tests.waiting import DEADLINE_S, until_sync


@contextmanager
def server_thread(fake: FakeBackend | None = None, **kwargs: object) -> Iterator[str]:
    """The fake server (`fake`, or one made from `kwargs`) on its own event loop in a thread, so the CLI
    can run its loop in this one."""
    backend = fake or FakeBackend(**kwargs)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    ready: dict[str, object] = {}
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner, url = loop.run_until_complete(start(backend))
            ready.update(runner=runner, url=url)
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
        finally:
            loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(DEADLINE_S), "the fake server did not start"
    try:
        yield str(ready["url"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["eksinfer", *args])
    try:
        run()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.slow
def test_run_with_yaml_output_and_plots(tmp_path, monkeypatch, capsys):
    out, plots = tmp_path / "run.json", tmp_path / "plots"
    with server_thread(ttft_s=0.02, itl_s=0.005) as url:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(
            f"target: {url}\nmodel: fake-model\nconcurrency: 3\nnum_requests: 9\nmax_tokens: 4\n"
            "workload: {type: shared-prefix, num_groups: 3, num_prompts_per_group: 3, output_len: 6}\n"
            f"metrics_urls: ['{url}/metrics']\n"
        )
        args = ["-c", str(cfg), "-n", "6", "-a", "question_len=8", "--slo-ttft-ms", "500"]
        code = cli(monkeypatch, "bench", *args, "-o", str(out), "--plots", str(plots), "--label", "yaml-run")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "TTFT (ms)" in captured.out
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert doc["label"] == "yaml-run"
    assert s["requests"]["completed"] == 6  # the flag overrides the file's 9
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(s[key]) >= {"mean", "p50", "p90", "p99"}
    assert s["goodput"]["fraction"] == 1.0
    assert s["hit_rate"]["metrics"] is not None
    assert len(doc["requests"]) == 6
    assert all(r["output_tokens"] == 6 for r in doc["requests"])  # the workload's output_len
    assert all(len(r["itl_ms"]) == 5 for r in doc["requests"])
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == ["run-latency-cdf.png", "run-ttft-over-time.png"]
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_sweep_writes_stages_and_rate_plot(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep.json"
    with server_thread(ttft_s=0.005) as url:
        code = cli(monkeypatch, "bench", "-t", url, "-m", "fake-model", "-n", "5", "--max-tokens", "1",
                   "--sweep", "20,40", "--past-saturation",  # both stages, even if a busy machine saturates
                   "-o", str(out), "--plots", str(tmp_path))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert [r["offered_rate"] for r in doc["runs"]] == [20.0, 40.0]
    assert (tmp_path / "sweep-throughput-vs-rate.png").exists()
    assert "stage: 40.00 req/s" in capsys.readouterr().out


def _doc(ttft_p50: float, rps: float) -> dict:
    lat = {"mean": ttft_p50, "p50": ttft_p50, "p90": ttft_p50, "p99": ttft_p50}
    summary = {
        "requests": {"completed": 10, "failed": 0, "total": 10}, "duration_s": 1.0,
        "ttft_ms": lat, "tpot_ms": lat, "itl_ms": lat, "e2e_ms": lat,
        "request_throughput": rps, "output_throughput": rps * 10, "total_token_throughput": None,
        "goodput": None, "errors": {}, "hit_rate": {"metrics": 0.5, "cached_tokens": None},
    }  # fmt: skip
    return {"summary": summary, "requests": [], "label": ""}


def test_compare_prints_ratios(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc(100.0, 4.0)))
    b.write_text(json.dumps(_doc(50.0, 10.0)))
    assert cli(monkeypatch, "bench", "compare", str(a), str(b)) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "TTFT p50" in line)
    assert "100.00" in row
    assert "50.00" in row
    assert "0.500" in row
    row = next(line for line in out.splitlines() if "requests/s" in line)
    assert "2.500" in row


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-t", "http://127.0.0.1:9", "-m", "x"], 4, "error: cannot reach target http://127.0.0.1:9"),
        (["-t", "{url}", "-m", "nope"], 2, "error: model: unknown model at"),
        (["-t", "{url}", "-m", "fake-model", "--dataset", "{bad}"], 2, "bad.jsonl:1: not valid JSON"),
        (["-t", "{url}", "-m", "fake-model", "--concurrency", "0"], 2, "error: concurrency: Input should be"),
        (["-t", "{url}", "-m", "fake-model", "-w", "random", "-a", "nope=1"], 2, "workload.random.nope"),
        (["-t", "{url}", "-m", "fake-model", "-a", "broken"], 2, "--workload-arg: expected KEY=VALUE"),
        (["-t", "{url}", "-m", "fake-model", "--sweep", "fast"], 2, "--sweep: expected 'auto'"),
        (["-c", "{yaml}"], 2, "not valid YAML"),
        (["compare", "{bad}", "{bad}"], 2, "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys, args, code, message):
    bad, yaml_file = tmp_path / "bad.jsonl", tmp_path / "bad.yaml"
    bad.write_text("{oops\n")
    yaml_file.write_text("target: [unclosed\n")
    with server_thread() as url:
        argv = [a.format(url=url, bad=bad, yaml=yaml_file) for a in args]
        assert cli(monkeypatch, "bench", *argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_no_successful_request_fails_after_writing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    with server_thread(fail_every=1) as url:
        code = cli(monkeypatch, "bench", "-t", url, "-m", "fake-model", "-n", "3", "-o", str(out))
    assert code == 4
    assert "no request succeeded (http_500 x3)" in capsys.readouterr().err
    assert json.loads(out.read_text())["summary"]["errors"] == {"http_500": 3}


def test_ctrl_c_writes_what_was_measured(tmp_path, monkeypatch, capsys):
    """Ctrl-C (SIGINT to this process) once the run has answered 12 requests: the bench has its handler
    installed by then, whatever the machine's speed, and the 20 s run ends early with what it measured."""
    out = tmp_path / "r.json"
    fake = FakeBackend(ttft_s=0.01)
    gave_up = threading.Event()

    def interrupt_when_running() -> None:
        try:
            until_sync(lambda: fake.requests > 12 or gave_up.is_set(), what="bench sending requests")
        finally:
            if not gave_up.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    with server_thread(fake) as url:
        timer = threading.Thread(target=interrupt_when_running, daemon=True)
        timer.start()
        try:
            args = [
                "-t",
                url,
                "-m",
                "fake-model",
                "--concurrency",
                "2",
                "--duration",
                "20",
                "--max-tokens",
                "2",
            ]
            code = cli(monkeypatch, "bench", *args, "-o", str(out))
        finally:
            gave_up.set()
            timer.join()
    assert code == 130
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
    assert doc["summary"]["requests"]["completed"] > 10  # more than 12 reached the server, 2 at most cut
    assert "stopping: writing what was measured" in capsys.readouterr().err
