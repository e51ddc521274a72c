"""`make bench ARGS=pd`: aggregated vs prefill/decode disaggregated serving on the same simulated GPUs, side
by side in one run, next to what the planner's performance model predicts.

Setup: 4 simulated engines (`eksinfer sim`, llama-3.1-8b on H100, TP 1, all with vLLM's NixlConnector
`{"kv_connector":"NixlConnector","kv_role":"kv_both"}`, KV moving over NVLink: one 8-GPU node) in one process,
fresh per system under test. Systems:
  agg 4        `eksinfer gateway`, kv-aware, every engine prefills and decodes
  P/D 1P+3D    `eksinfer gateway` with a `disaggregation:` profile: 1 prefill engine, 3 decode engines
  P/D 2P+2D    the same with 2 + 2 (and 3 + 1 without --quick: this mix's prefill work outweighs its decode)
  vllm-router  PyPI `vllm-router --vllm-pd-disaggregation --prefill URL --decode URL --kv-connector nixl`
               (1P+3D and 2P+2D), when it installs and runs against the simulator (else the reason)
Workload: closed loop at each concurrency, a seeded mix of long prompts (LONG_TOKENS, a document to read)
and short chats (SHORT_TOKENS), every prompt distinct (no prefix reuse: P/D's case is prefill interference,
not caching), OUTPUT_TOKENS each (ignore_eos), streamed; requests per level = max(MIN_REQUESTS, 3 x c).
Reported per system and concurrency, in simulated seconds (wall time / time scale): TTFT P50/P99, TPOT
P50/P99 (per request: (last token - first token) / (tokens - 1)), output tokens/s, and goodput: requests/s
meeting TTFT < 2 s and TPOT < the plan's target (50 ms, the conversational preset), and in () at a tight 20 ms
(where an 8B model's prefill interference shows), next to the planner's predicted TTFT / TPOT / tokens/s for
the same configuration: `eksinfer.perf.mix` (the classes priced apart, the gateway's decider split, the
prefill pool as a queue), beside the model before it (`mean`: the mean prompt, every prompt prefilled
remotely, no prefill queue), with mean TTFT per class (long / short) measured and predicted. P/D "pays"
at a concurrency where its goodput beats the aggregated row's by
more than 10% (run-to-run noise of these short runs is a few percent); the planner's choice "agrees" when
the configuration it predicts best measures within 10% of the best.

Options: --quick (two concurrency levels, no vllm-router 1P+3D), --concurrency=8,32,64, --time-scale=T,
--no-vllm-router, --long-fraction=F (the `=` form: `make bench ARGS="pd --concurrency=4,16"`), --save=FILE
(the measured samples as JSON), --load=FILE (report those again against the current model, no run),
--virtual (the same systems on the simulator's engine cores in virtual time: no gateway, no HTTP, seconds;
benchmarks/pd_virtual.py), --systems=1P+3D (only the systems whose name contains one of these, comma
separated).
A level's failed requests are printed under its row, grouped by what the client got (status and error, or the
in-band error event, or the client's own exception) and after how many wall seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.gateway_e2e import free_port_block, spawn, stderr_tail, stop_proc, vllm_router_exe, wait_http
from eksinfer.bench.prompts import random_text

MODEL = "m"
HOST = "127.0.0.1"
ENGINES = 4
SIM_MODEL, SIM_GPU = "llama-3.1-8b", "H100"
LONG_TOKENS = 8192
SHORT_TOKENS = 128
OUTPUT_TOKENS = 64
MIN_REQUESTS = 24
TTFT_SLO_S = 2.0
TPOT_SLO_S = 0.05  # the plan's conversational TPOT target (planner/request.py Slo)
TIGHT_TPOT_S = 0.02  # a tighter target (interactive use on a small model), where prefill interference counts
AGREE_WITHIN = 0.10  # the planner's pick "agrees" when its measured goodput is within 10% of the best
MIN_UNCACHED_TOKENS = 256  # short chats (~140 tokens with the template) prefill where they decode
NIXL = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_pd")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concurrency", default=None, help="comma-separated levels (default 4,16,48)")
    ap.add_argument("--time-scale", type=float, default=2.0, help="wall seconds per simulated second")
    ap.add_argument("--long-fraction", type=float, default=0.3)
    ap.add_argument("--no-vllm-router", action="store_true")
    ap.add_argument("--save", default=None, help="write the measured samples to this JSON file")
    ap.add_argument("--load", default=None, help="report samples saved with --save (no run)")
    ap.add_argument("--virtual", action="store_true", help="engine cores in virtual time, no HTTP (seconds)")
    ap.add_argument(
        "--systems", default=None, help="comma-separated systems to run, by name or part of it (agg,1P+3D)"
    )
    args = ap.parse_args(argv)
    default = "8,32" if args.quick else "4,16,48"
    args.levels = [int(x) for x in (args.concurrency or default).split(",")]
    return args


# --- workload ------------------------------------------------------------------------------------------
def workload(n: int, long_fraction: float, seed: int) -> list[dict[str, Any]]:
    """n chat requests: long documents and short chats in a seeded order, every prompt distinct."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        long = rng.random() < long_fraction
        text = random_text(rng, LONG_TOKENS if long else SHORT_TOKENS)
        out.append(
            {
                "_long": long,
                "model": MODEL,
                "messages": [{"role": "user", "content": f"[{seed}-{i}] {text}"}],
                "max_tokens": OUTPUT_TOKENS,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
    return out


@dataclass
class Sample:
    long: bool
    ttft_s: float
    tpot_s: float
    tokens: int


@dataclass(frozen=True)
class Failure:
    """Why one request got no usable answer, as the client saw it, and when (wall seconds after sending)."""

    reason: str
    after_s: float


@dataclass
class LevelResult:
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    duration_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def pct(self, attr: str, q: float, only_long: bool | None = None) -> float:
        values = sorted(getattr(s, attr) for s in self.samples if only_long is None or s.long == only_long)
        return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan

    def mean(self, attr: str, only_long: bool | None = None) -> float:
        values = [getattr(s, attr) for s in self.samples if only_long is None or s.long == only_long]
        return sum(values) / len(values) if values else math.nan

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.samples) / self.duration_s if self.duration_s else 0.0

    def goodput(self, tpot_slo_s: float = TPOT_SLO_S) -> float:
        """Requests per simulated second that met TTFT < 2 s and TPOT < `tpot_slo_s`."""
        good = sum(1 for s in self.samples if s.ttft_s < TTFT_SLO_S and s.tpot_s < tpot_slo_s)
        return good / self.duration_s if self.duration_s else 0.0


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], scale: float
) -> Sample | Failure:
    payload = {k: v for k, v in body.items() if not k.startswith("_")}
    started = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with session.post(f"{url}/v1/chat/completions", json=payload) as r:
            if r.status != 200:
                reason = f"HTTP {r.status} {_error_text(await r.read())}"
                return Failure(reason, time.perf_counter() - started)
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:  # an in-band error event (vLLM's, or the gateway's after the commit)
                    reason = f"stream error after {tokens} tokens: {_error_text(line[5:])}"
                    return Failure(reason, time.perf_counter() - started)
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first if first is not None else now
                    last = now
                    tokens += 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        reason = f"client {type(err).__name__} after {tokens} tokens: {str(err)[:120]}"
        return Failure(reason, time.perf_counter() - started)
    if first is None or last is None:
        return Failure("stream ended without a token", time.perf_counter() - started)
    tpot = (last - first) / (tokens - 1) if tokens > 1 else 0.0
    return Sample(body["_long"], (first - started) / scale, tpot / scale, tokens)


def _error_text(raw: bytes) -> str:
    """An OpenAI-style error body as `type: message` (endpoint ids and numbers kept: they say which hop)."""
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return raw[:160].decode(errors="replace")
    if not isinstance(err, dict):
        return str(err)[:160]
    return f"{err.get('type') or err.get('code')}: {str(err.get('message'))[:160]}"


async def closed_loop(url: str, bodies: list[dict[str, Any]], concurrency: int, scale: float) -> LevelResult:
    result = LevelResult(concurrency)
    queue = list(reversed(bodies))
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                sample = await _one(session, url, body, scale)
                if isinstance(sample, Failure):
                    result.errors += 1
                    result.failures.append(sample)
                else:
                    result.samples.append(sample)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.duration_s = (time.perf_counter() - started) / scale
    return result


# --- systems under test --------------------------------------------------------------------------------
def sim_supports_nixl() -> str | None:
    """None when the simulator has the NixlConnector, else why not."""
    from eksinfer.sim.config import SimOptions

    if "kv_transfer" not in getattr(SimOptions, "__dataclass_fields__", {}):
        return "this simulator has no NixlConnector (SimOptions.kv_transfer)"
    return None


def start_sim(base: int, scale: float, nixl: bool) -> subprocess.Popen[bytes]:
    pd = (
        "from eksinfer.sim.pd.config import KvTransferConfig\n"
        f"extra = dict(kv_transfer=KvTransferConfig.from_json({NIXL!r}), kv_link='nvlink',"
        " nixl_side_channel_port=0)\n"
        if nixl
        else "extra = {}\n"
    )
    code = (
        "from eksinfer.sim.config import SimOptions\n"
        "from eksinfer.sim.run import serve\n"
        f"{pd}"
        f"opts = SimOptions(model={SIM_MODEL!r}, gpu={SIM_GPU!r}, port={base},"
        f" served_model_name=({MODEL!r},),"
        f" time_scale={scale}, seed=1, natural_output_tokens=0, **extra)\n"
        f"serve(opts, {ENGINES}, log_level='warning')\n"
    )
    return spawn([sys.executable, "-c", code])


def gateway_config(urls: list[str], prefill: int, port: int, scale: float) -> dict[str, Any]:
    pools = ["prefill" if i < prefill else "decode" for i in range(len(urls))] if prefill else None
    static = [
        {"url": u, "models": [MODEL], **({"pool": pools[i]} if pools else {})} for i, u in enumerate(urls)
    ]
    config: dict[str, Any] = {
        "server": {"host": HOST, "port": port, "first_token_timeout_s": 600.0},
        "endpoints": {"static": static},
        "scrape": {"interval_s": 0.25},
        "routing": {"preset": "kv-aware", "tokenizer": {"mode": "builtin"}, "debug_header": None},
    }
    if prefill:
        config["disaggregation"] = {
            MODEL: {
                "prefill_pool": "prefill",
                "decode_pool": "decode",
                "min_uncached_tokens": MIN_UNCACHED_TOKENS,
                "prefill_timeout_s": 120.0 * max(1.0, scale),
            }
        }
    return config


def start_gateway(urls: list[str], prefill: int, scale: float, workdir: Path) -> tuple[Any, str]:
    port = free_port_block(1)
    path = workdir / f"gateway-pd{prefill}.yaml"
    path.write_text(yaml.safe_dump(gateway_config(urls, prefill, port, scale)))
    exe = str(Path(sys.executable).with_name("eksinfer"))
    return spawn([exe, "gateway", "--config", str(path), "--log-level", "warning"]), f"http://{HOST}:{port}"


def start_vllm_router_pd(exe: str, urls: list[str], prefill: int) -> tuple[Any, str]:
    port = free_port_block(1)
    cmd = [exe, "--host", HOST, "--port", str(port), "--vllm-pd-disaggregation", "--kv-connector", "nixl"]
    for url in urls[:prefill]:
        cmd += ["--prefill", url]
    for url in urls[prefill:]:
        cmd += ["--decode", url]
    cmd += ["--policy", "cache_aware", "--worker-startup-check-interval", "1"]
    cmd += ["--prometheus-host", HOST, "--prometheus-port", str(free_port_block(1))]
    cmd += ["--log-level", os.environ.get("VR_LOG", "warning"), "--disable-retries"]
    cmd += ["--max-concurrent-requests", "4096", "--request-timeout-secs", "3600"]
    return spawn(cmd, dict(os.environ, HF_HUB_OFFLINE="1")), f"http://{HOST}:{port}"


async def pd_counts(url: str) -> str:
    """The gateway's P/D decision and fallback counts, and the endpoints its stall watchdog found stalled,
    one short string."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
        text = await r.text()
    counts = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "eksinfer_gateway_pd_decisions_total":
                counts[s.labels["decision"]] = int(s.value)
            elif s.name == "eksinfer_gateway_pd_fallbacks_total":
                counts[f"fallback:{s.labels['reason']}"] = int(s.value)
            elif s.name == "eksinfer_gateway_stalls_total":
                counts["stalls"] = int(s.value)
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


@dataclass
class System:
    name: str
    prefill: int  # prefill engines (0: aggregated)
    router: str  # "eksinfer" or "vllm-router"


async def run_system(sys_: System, args: argparse.Namespace, workdir: Path) -> dict[int, LevelResult] | str:
    """Fresh engines, the router under test, every concurrency level; a string says why it was skipped."""
    base = free_port_block(ENGINES)
    urls = [f"http://{HOST}:{base + i}" for i in range(ENGINES)]
    sim = start_sim(base, args.time_scale, nixl=args.nixl)
    proc = None
    try:
        await wait_http([f"{u}/health" for u in urls], sim, timeout_s=120)
        if sys_.router == "eksinfer":
            proc, url = start_gateway(urls, sys_.prefill, args.time_scale, workdir)
        else:
            exe = vllm_router_exe()
            if exe is None:
                return "`pip install vllm-router` failed (no network or no wheel for this platform)"
            proc, url = start_vllm_router_pd(exe, urls, sys_.prefill)
        try:
            await wait_http([f"{url}/v1/models" if sys_.router == "eksinfer" else f"{url}/health"], proc, 120)
        except RuntimeError as err:
            return f"did not start: {str(err)[:600]}"
        await asyncio.sleep(1.0)  # scrapers settle
        results = {}
        for level in args.levels:
            n = max(MIN_REQUESTS, 3 * level)
            res = await closed_loop(url, workload(n, args.long_fraction, seed=level), level, args.time_scale)
            if not res.samples:
                tail = stderr_tail(proc)[-400:] or stderr_tail(sim)[-400:]
                return f"every request failed at c={level} ({res.errors} errors): {tail}"
            results[level] = res
            print(f"  {sys_.name:<22} c={level:<3} {_row(res)}", flush=True)
            for line in failure_lines(res.failures):
                print(f"  {sys_.name:<22} c={level:<3}   failed: {line}", flush=True)
        if sys_.router == "eksinfer" and sys_.prefill:
            print(f"  {sys_.name:<22} gateway P/D counts: {await pd_counts(url)}", flush=True)
        return results
    finally:
        stop_proc(proc)
        stop_proc(sim)


def failure_lines(failures: list[Failure]) -> list[str]:
    """The failed requests grouped by reason (digits in endpoint ports and times folded), with how many and
    after how long (wall seconds, min/max)."""
    groups: dict[str, list[float]] = {}
    for f in failures:
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "N", f.reason), []).append(f.after_s)
    return [
        f"{len(ts)} x {reason} (after {min(ts):.1f}-{max(ts):.1f} s wall)"
        for reason, ts in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]


def _row(r: LevelResult) -> str:
    ms = 1000.0
    return (
        f"ttft p50 {r.pct('ttft_s', 0.5) * ms:7.0f} p99 {r.pct('ttft_s', 0.99) * ms:7.0f} ms | "
        f"tpot p50 {r.pct('tpot_s', 0.5) * ms:6.1f} p99 {r.pct('tpot_s', 0.99) * ms:6.1f} ms | "
        f"{r.tokens_per_s:7.0f} tok/s | goodput {r.goodput():5.2f} ({r.goodput(TIGHT_TPOT_S):5.2f}) req/s | "
        f"err {r.errors}"
    )


# --- the planner's prediction ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Predicted:
    ttft_s: float  # mean over requests
    tpot_s: float
    tokens_per_s: float
    ttft_long_s: float = math.nan  # per class (the prompt mix model only)
    ttft_short_s: float = math.nan

    @property
    def meets(self) -> bool:
        worst = self.ttft_s if math.isnan(self.ttft_long_s) else max(self.ttft_long_s, self.ttft_short_s)
        return worst < TTFT_SLO_S and self.tpot_s < TPOT_SLO_S


def _perf() -> Any:
    from eksinfer.catalog import get_gpu, get_model
    from eksinfer.perf import build_engine_perf

    return build_engine_perf(get_model(SIM_MODEL), get_gpu(SIM_GPU))


def predict_mean(prefill: int, concurrency: int, long_fraction: float) -> Predicted:
    """The model before prompt mixes: the mean prompt, every prompt prefilled remotely, no prefill queue."""
    from eksinfer.catalog import get_gpu
    from eksinfer.perf.serving import predict_aggregated, predict_decode, predict_prefill

    perf = _perf()
    isl = round(long_fraction * LONG_TOKENS + (1 - long_fraction) * SHORT_TOKENS)
    osl = OUTPUT_TOKENS
    if not prefill:
        per = math.ceil(concurrency / ENGINES)
        p = predict_aggregated(perf, input_tokens=isl, output_tokens=osl, concurrency=per)
        return Predicted(p.ttft_s, p.tpot_s, min(ENGINES, concurrency) * p.output_tokens_per_s)
    decoders = ENGINES - prefill
    link_gbytes_s = get_gpu(SIM_GPU).nvlink_gbps / 8  # one node: the KV crosses NVLink
    pf = predict_prefill(perf, input_tokens=isl, kv_transfer_gbps=link_gbytes_s)
    d = predict_decode(
        perf, input_tokens=isl, output_tokens=osl, concurrency=math.ceil(concurrency / decoders)
    )
    e2e = pf.ttft_s + max(0, osl - 1) * d.tpot_s
    rate = min(concurrency / e2e, decoders * d.requests_per_s, prefill * pf.requests_per_s)
    return Predicted(pf.ttft_s, d.tpot_s, rate * osl)


def predict(prefill: int, concurrency: int, long_fraction: float) -> Predicted:
    """The planner's model for the prompt mix (`eksinfer.perf.mix`): classes priced apart, the gateway's
    decider (MIN_UNCACHED_TOKENS) sending only long prompts to a prefill pool that queues."""
    from eksinfer.catalog import get_gpu
    from eksinfer.perf.mix import PromptClass, predict_aggregated_mix, predict_disaggregated_mix

    perf = _perf()
    mix = (
        PromptClass(long_fraction, LONG_TOKENS, OUTPUT_TOKENS),
        PromptClass(1 - long_fraction, SHORT_TOKENS, OUTPUT_TOKENS),
    )
    if not prefill:
        p = predict_aggregated_mix(perf, mix, concurrency=math.ceil(concurrency / ENGINES))
        tokens = min(ENGINES, concurrency) * p.output_tokens_per_s
        long, short = (c.ttft_s for c in p.classes)
        return Predicted(p.ttft_s, p.tpot_s, tokens, long, short)
    pd = predict_disaggregated_mix(
        perf,
        mix,
        prefill_replicas=prefill,
        decode_replicas=ENGINES - prefill,
        concurrency=concurrency,
        kv_transfer_gbps=get_gpu(SIM_GPU).nvlink_gbps / 8,
        min_uncached_tokens=MIN_UNCACHED_TOKENS,
    )
    long, short = (c.ttft_s for c in pd.decode.classes)
    return Predicted(pd.ttft_s, pd.tpot_s, pd.output_tokens_per_s, long, short)


# --- the run ----------------------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> None:
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="eksinfer-bench-pd-"))
    why = sim_supports_nixl()
    args.nixl = why is None
    systems = [System("eksinfer agg 4", 0, "eksinfer")]
    if why is None:
        systems += [System("eksinfer P/D 1P+3D", 1, "eksinfer"), System("eksinfer P/D 2P+2D", 2, "eksinfer")]
        if not args.quick:  # this mix is prefill-heavy: the split it needs has more prefill engines
            systems.append(System("eksinfer P/D 3P+1D", 3, "eksinfer"))
        if not args.no_vllm_router:
            if not args.quick:
                systems.append(System("vllm-router P/D 1P+3D", 1, "vllm-router"))
            systems.append(System("vllm-router P/D 2P+2D", 2, "vllm-router"))
    print(
        f"\n-- {ENGINES} simulated {SIM_GPU} engines ({SIM_MODEL}, TP 1) per system; closed loop; "
        f"{args.long_fraction:.0%} prompts of {LONG_TOKENS} tokens, the rest {SHORT_TOKENS}; {OUTPUT_TOKENS} "
        f"output tokens; time scale {args.time_scale}; times in simulated seconds; "
        f"SLO TTFT < {TTFT_SLO_S:g} s, TPOT < {TPOT_SLO_S * 1000:g} ms --",
        flush=True,
    )
    if why is not None:
        print(f"P/D rows skipped: {why}")
    measured: dict[str, dict[int, LevelResult]] = {}
    if args.systems:
        wanted = [w.strip().lower() for w in args.systems.split(",") if w.strip()]
        systems = [s for s in systems if any(w in s.name.lower() for w in wanted)]
        if not systems:
            raise SystemExit(f"error: --systems {args.systems!r} names none of the systems of this run")
    if args.load:
        measured = load_samples(Path(args.load))
        systems = [s for s in systems if s.name in measured]
        args.levels = sorted({c for levels in measured.values() for c in levels})
    for sys_ in [] if args.load else systems:
        res = run_virtual(sys_, args) if args.virtual else await run_system(sys_, args, workdir)
        if isinstance(res, str):
            print(f"  {sys_.name:<22} skipped: {res}", flush=True)
            continue
        measured[sys_.name] = res
    if args.save:
        save_samples(Path(args.save), measured)
    report(systems, measured, args)


def run_virtual(sys_: System, args: argparse.Namespace) -> dict[int, LevelResult] | str:
    """The system on engine cores in virtual time (benchmarks/pd_virtual.py): no gateway, no HTTP; samples
    after the first quarter of completions (warm-up), many more requests than the HTTP run affords."""
    if sys_.router != "eksinfer":
        return "the virtual run has no vllm-router"
    from benchmarks.pd_virtual import simulate
    from eksinfer.catalog import get_gpu
    from eksinfer.perf.mix import PromptClass

    mix = (
        PromptClass(args.long_fraction, LONG_TOKENS, OUTPUT_TOKENS),
        PromptClass(1 - args.long_fraction, SHORT_TOKENS, OUTPUT_TOKENS),
    )
    results = {}
    for level in args.levels:
        done = simulate(
            _perf(),
            mix,
            prefill_engines=sys_.prefill,
            decode_engines=ENGINES - sys_.prefill,
            concurrency=level,
            requests=max(200, 12 * level),
            kv_transfer_gbps=get_gpu(SIM_GPU).nvlink_gbps / 8,
            min_uncached_tokens=MIN_UNCACHED_TOKENS,
        )
        warm = len(done) // 4
        kept = [Sample(f.long, f.ttft_s, f.tpot_s, f.tokens) for f in done[warm + 1 :]]
        results[level] = LevelResult(level, kept, 0, done[-1].done_s - done[warm].done_s)
        print(f"  {sys_.name:<22} c={level:<3} {_row(results[level])}", flush=True)
    return results


def save_samples(path: Path, measured: dict[str, dict[int, LevelResult]]) -> None:
    doc = {
        name: {
            str(c): {
                "duration_s": r.duration_s,
                "errors": r.errors,
                "samples": [[s.long, s.ttft_s, s.tpot_s, s.tokens] for s in r.samples],
            }
            for c, r in levels.items()
        }
        for name, levels in measured.items()
    }
    path.write_text(json.dumps(doc))


def load_samples(path: Path) -> dict[str, dict[int, LevelResult]]:
    out: dict[str, dict[int, LevelResult]] = {}
    for name, levels in json.loads(path.read_text()).items():
        out[name] = {}
        for c, r in levels.items():
            samples = [Sample(bool(a), float(b), float(t), int(n)) for a, b, t, n in r["samples"]]
            out[name][int(c)] = LevelResult(int(c), samples, int(r["errors"]), float(r["duration_s"]))
    return out


def report(
    systems: list[System], measured: dict[str, dict[int, LevelResult]], args: argparse.Namespace
) -> None:
    tight = f"{TIGHT_TPOT_S * 1000:g} ms"
    print(
        "\n-- measured vs the planner's model: `mean` prices the mean prompt, every prompt remote, no prefill"
        " queue (the model before prompt mixes); `mix` prices the classes (perf.mix); means in ms --"
    )
    print(
        f"{'system':<22} {'c':>3} | {'TTFT long':>9} {'mix':>6} | {'TTFT short':>10} {'mix':>5} | "
        f"{'TTFT':>5} {'mean':>5} {'mix':>5} | {'TPOT':>5} {'mean':>5} {'mix':>5} | "
        f"{'tok/s':>5} {'mean':>5} {'mix':>5} | {'goodput':>13}"
    )
    for sys_ in systems:
        for level, r in measured.get(sys_.name, {}).items():
            old = predict_mean(sys_.prefill, level, args.long_fraction)
            p = predict(sys_.prefill, level, args.long_fraction)
            ms = 1e3
            print(
                f"{sys_.name:<22} {level:>3} | "
                f"{r.mean('ttft_s', True) * ms:9.0f} {p.ttft_long_s * ms:6.0f} | "
                f"{r.mean('ttft_s', False) * ms:10.0f} {p.ttft_short_s * ms:5.0f} | "
                f"{r.mean('ttft_s') * ms:5.0f} {old.ttft_s * ms:5.0f} {p.ttft_s * ms:5.0f} | "
                f"{r.mean('tpot_s') * ms:5.1f} {old.tpot_s * ms:5.1f} {p.tpot_s * ms:5.1f} | "
                f"{r.tokens_per_s:5.0f} {old.tokens_per_s:5.0f} {p.tokens_per_s:5.0f} | "
                f"{r.goodput():5.2f} ({r.goodput(TIGHT_TPOT_S):5.2f})"
            )
    errors = [
        (
            predict_mean(s_.prefill, c, args.long_fraction).tokens_per_s / r.tokens_per_s - 1,
            predict(s_.prefill, c, args.long_fraction).tokens_per_s / r.tokens_per_s - 1,
        )
        for s_ in systems
        if s_.router == "eksinfer"
        for c, r in measured.get(s_.name, {}).items()
        if r.tokens_per_s
    ]
    if errors:
        worst_old = max(abs(e[0]) for e in errors)
        worst_new = max(abs(e[1]) for e in errors)
        print(
            "tok/s error of the model, worst over the eksinfer rows: "
            f"mean prompt {worst_old:.0%}, mix {worst_new:.0%}"
        )
    agg = measured.get("eksinfer agg 4", {})
    for slo, label in ((TPOT_SLO_S, "plan's TPOT target"), (TIGHT_TPOT_S, f"TPOT {tight}")):
        for name, pd in measured.items():
            if name == "eksinfer agg 4" or not agg:
                continue
            ratios = [
                (c, pd[c].goodput(slo) / agg[c].goodput(slo)) for c in args.levels if c in pd and c in agg
            ]
            ratios = [(c, x) for c, x in ratios if math.isfinite(x)]
            text = " ".join(f"c={c}: x{x:.2f}" for c, x in ratios)
            wins = [c for c, x in ratios if x > 1 + AGREE_WITHIN]
            verdict = f"P/D pays at c={','.join(map(str, wins))}" if wins else "P/D does not pay here"
            print(f"goodput {name} / agg 4 ({label}): {text}  -> {verdict}")
    print("planner's choice (best predicted throughput, SLO met) vs measured best goodput, per concurrency:")
    for level in args.levels:
        pred = {
            s.name: predict(s.prefill, level, args.long_fraction) for s in systems if s.router == "eksinfer"
        }
        ok = {k: v for k, v in pred.items() if v.meets}
        chosen = max(ok, key=lambda k: ok[k].tokens_per_s) if ok else "none meets the SLO"
        meas = {k: v[level].goodput() for k, v in measured.items() if level in v and k in pred}
        if not meas:
            continue
        best = max(meas, key=lambda k: meas[k])
        close = chosen in meas and meas[chosen] >= (1 - AGREE_WITHIN) * meas[best]
        verdict = "agree" if close else "DISAGREE"
        print(f"  c={level:<3} planner: {chosen:<22} measured: {best:<22} {verdict}")


def main(argv: list[str]) -> None:
    asyncio.run(run(parse(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
