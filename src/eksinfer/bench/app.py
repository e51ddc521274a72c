"""What `eksinfer bench` does around the library: progress bar, Ctrl-C, output files, tables, exit status.

Ctrl-C once: stop sending, cut in-flight requests, write everything measured and exit 130. Twice: abort now.
A run in which no request succeeded still writes its file, then fails with one line naming the error kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eksinfer.bench.client import RequestRecord
from eksinfer.bench.config import BenchConfig
from eksinfer.bench.report import compare_table, summary_table
from eksinfer.bench.result import BenchResult, load_result
from eksinfer.bench.sweep import SweepResult, run_sweep
from eksinfer.errors import ConfigError, UpstreamError

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunOptions:
    output: Path | None = None
    plots_dir: Path | None = None
    sweep: str | None = None  # "auto" or comma-separated rates
    sweep_stages: int = 5
    progress: bool = True
    label: str = ""
    past_saturation: bool = False  # a sweep runs every stage instead of stopping at the first saturated one


def parse_rates(text: str) -> list[float] | None:
    """`auto` -> None (find the peak first); `1,2,4` -> [1.0, 2.0, 4.0]."""
    if text.strip() == "auto":
        return None
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"expected 'auto' or comma-separated rates, got {text!r}", field="--sweep"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise ConfigError("rates must be positive numbers", field="--sweep")
    return rates


@contextlib.contextmanager
def _progress(
    console: Console, total: int | None, enabled: bool
) -> Iterator[Callable[[RequestRecord], None]]:
    if not enabled:
        yield lambda rec: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("requests", total=total)
        failed = 0

        def on_record(rec: RequestRecord) -> None:
            nonlocal failed
            if rec.error is not None:
                failed += 1
                bar.update(task, advance=1, description=f"requests ({failed} failed)")
            else:
                bar.advance(task)

        yield on_record


def _run_loop(
    main: Callable[[], Coroutine[Any, Any, BenchResult | SweepResult]],
) -> BenchResult | SweepResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def execute(config: BenchConfig, opts: RunOptions, console: Console) -> BenchResult | SweepResult:
    """Run (one run or a sweep) with a progress bar; the first Ctrl-C sets the stop event."""
    rates = parse_rates(opts.sweep) if opts.sweep else None
    total = None if opts.sweep or config.num_requests is None else config.num_requests + config.warmup

    async def main() -> BenchResult | SweepResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C aborts at once
            console.print("stopping: writing what was measured (Ctrl-C again to abort)")

        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        with _progress(console, total, opts.progress and console.is_terminal) as on_record:
            if opts.sweep:
                return await run_sweep(
                    config,
                    rates,
                    num_stages=opts.sweep_stages,
                    stop_at_saturation=not opts.past_saturation,
                    stop=stop,
                    on_record=on_record,
                )
            from eksinfer.bench.runner import run_bench

            return await run_bench(config, stop=stop, on_record=on_record)

    return _run_loop(main)


def check_outputs(opts: RunOptions) -> None:
    """Fail before the run, not after it, when the JSON file or the plots folder cannot be written."""
    import tempfile

    for path, field, want_dir in ((opts.output, "--output", False), (opts.plots_dir, "--plots", True)):
        if path is None:
            continue
        if path.exists() and path.is_dir() != want_dir:
            raise ConfigError(f"{path} is {'a file' if want_dir else 'a folder'}", field=field)
        folder = path if want_dir else path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create {folder}: {err.strerror}", field=field) from None
        try:  # a real write: os.access says yes to root even on /proc
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ConfigError(f"cannot write in {folder}: {err.strerror}", field=field) from None


def report(result: BenchResult | SweepResult, opts: RunOptions, out: Console, err: Console) -> int:
    """Print tables, write the JSON and plots; returns the exit status (raises when nothing succeeded)."""
    if isinstance(result, BenchResult):
        result.label = opts.label
        doc, summaries = result.to_json(), [("eksinfer bench", result.summary)]
    else:
        doc = result.to_json()
        summaries = []
        for run, stage in zip(doc["runs"], result.stages, strict=True):
            rate = "throughput probe" if stage.offered_rate is None else f"{stage.offered_rate:.2f} req/s"
            summaries.append((f"stage: {rate}{' (saturated)' if stage.saturated else ''}", run["summary"]))
    for title, summary in summaries:
        out.print(summary_table(summary, title))
    try:
        _write(doc, opts, err)
    except OSError as error:  # check_outputs ran before; this is a disk that filled or changed since
        where = error.filename or opts.output
        raise ConfigError(f"cannot write {where}: {error.strerror}", field="--output") from None
    if result.interrupted:
        return EXIT_INTERRUPTED
    if summaries and all(s["requests"]["completed"] == 0 for _, s in summaries):
        errors = summaries[-1][1]["errors"]
        kinds = ", ".join(f"{k} x{v}" for k, v in errors.items()) or "none sent"
        raise UpstreamError(f"no request succeeded ({kinds}); see error_detail in the output file")
    return 0


def _write(doc: dict[str, Any], opts: RunOptions, err: Console) -> None:
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        import json

        opts.output.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        err.print(f"wrote {opts.output}")
    if opts.plots_dir:
        from eksinfer.bench.plots import write_plots

        for path in write_plots(doc, opts.plots_dir, opts.output.stem if opts.output else "bench"):
            err.print(f"wrote {path}")


def compare(path_a: Path, path_b: Path, out: Console) -> None:
    """Print two saved single runs side by side with B/A ratios (sweeps: their last stages)."""
    docs = []
    for path in (path_a, path_b):
        doc = load_result(path)
        if "runs" in doc:
            if not doc["runs"]:
                raise ConfigError(f"{path}: sweep has no stages")
            doc = doc["runs"][-1]
        docs.append(doc)
    names = [d.get("label") or p.name for d, p in zip(docs, (path_a, path_b), strict=True)]
    out.print(compare_table(docs[0]["summary"], docs[1]["summary"], names[0], names[1]))
