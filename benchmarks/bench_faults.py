"""`make bench ARGS=faults`: the gateway's resilience under a fault schedule, side by side with vllm-router.

Five simulated engines (`eksinfer.sim`, llama-3.1-8b on H100 timing, `max_num_seqs` 4, in this process so the
schedule can break them) behind `eksinfer gateway` (a subprocess; four engines listed statically, the fifth
found through a small fake Kubernetes API server, so that a Spot-style interruption can be announced with a
deletion timestamp), then behind vllm-router (PyPI `vllm-router`, its retries and circuit breaker on, which
are its defaults). Each target gets fresh engines and the same open-loop streaming load: Poisson arrivals at
70 % of the capacity measured first (a closed loop straight to the engines), chats of 32 output tokens.

Fault schedule (seconds from the start of the load; `--stretch 2` doubles every time):
    15  engine 0 is killed mid-stream (connections reset, no error event); restarted at 30
    25  engine 1 stalls (accepts requests, never answers) for 20 s
    40  engine 2 answers 30 % of requests with HTTP 500, for 20 s
    50  engine 3 gets a deletion timestamp (Spot interruption notice); killed at 60, never back
    65  every self-hosted engine is down for 30 s; the gateway's cascade is [eks, bedrock], with the local
        Bedrock stub (`eksinfer.sim.bedrock`, reached by real botocore) as the last tier (this phase runs
        when the Bedrock pool kind is part of the build; vllm-router has no such tier). The stub answers
        like Bedrock does, not at once: 0.76 s to the first token and 60 tokens/s (Artificial Analysis'
        median for Claude 3 Sonnet on Amazon Bedrock; `--bedrock-ttft-s`, `--bedrock-tokens-per-s`), on
        the engines' clock (times `--time-scale`, as the simulated engines are slowed)
    70  (100 with the Bedrock phase) the load stops; every request has a 60 s client deadline
vllm-router is not told about the deletion (it has no Kubernetes watch here): it sees engine 3 die at 60 s.

Per request: answered (and by which pool, from `x-eksinfer-pool`), failed before streaming (status, code),
broken after streaming started (ended with an error event, or cut without one), hung (client deadline). TTFT
P99 of requests sent during the faults (15 s to the end) against those sent in the quiet first 15 s, and per
stretch of the schedule where the slow requests' time went (the gateway's access log `ttft_parts_s`: the
answering endpoint's queue, waits ended by the stall watchdog, failed attempts, backoff, its own time).
After the load: the gateway's in-flight gauges and retries in flight (must be 0), its open file descriptors
and resident memory against their values before, and the stream breaks it continued. The gateway runs the
schedule `--passes` times (2) in one process, so what is built on first use shows in pass 1 and a leak in
pass 2.

The control (`--control-passes`, 1; 0 skips it): the same gateway, the same arrivals (pass n of the control
replays pass n's) and the same capacity timeline, with each fault replaced by its graceful equivalent: every
engine is found through its own fake Kubernetes API, an engine the faults take out is drained (deletion
timestamp: no new requests, those in flight finish) when its fault starts and comes back as a new pod when
it ends, and the engine answering 500s is kept and answers well. Nothing has to be detected, retried or
waited out, so the control's TTFT is what any router could do with the engines left, and the faulted run's
excess over it, per stretch, is the gateway's (detection, retries, backoff, stall waits, ejections that
outlast their fault). Then Bedrock alone: every engine drained, the same load for 30 s, the stub's own TTFT
P99 on the bench's clock, against which the all-down stretch is read.

Run: `make bench ARGS=faults` (about 8.5 minutes; the control adds about 2.5) or `.venv/bin/python -m
benchmarks.run faults --no-vllm-router` (about 7).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from benchmarks.gateway_e2e import free_port_block, stderr_tail, stop_proc, vllm_router_exe, wait_http
from eksinfer.sim.cluster import SimCluster, start_cluster
from eksinfer.sim.config import FaultOptions, SimOptions

HOST = "127.0.0.1"
MODEL = "m"
ENGINES = 5
MAX_SEQS = 4
OUTPUT_TOKENS = 32
LOAD_SHARE = 0.7
DEADLINE_S = 60.0  # per request, client side: "hung" means this passed
QUIET_S = 15.0
ATTEMPTS = "eksinfer_gateway_attempt_failures_total"
FALLBACKS = "eksinfer_gateway_fallbacks_total"
BEDROCK_MODEL_ID = "us.meta.llama3-3-70b-instruct-v1:0"  # any id: the stub answers for every model


@dataclass
class Outcome:
    sent_at: float
    kind: str = "hung"  # ok | failed | broken_event | broken_cut | hung
    detail: str = ""
    pool: str = ""
    ttft_s: float | None = None
    request_id: str = ""
    parts: dict[str, float] | None = None  # the gateway's `ttft_parts_s` for this request (access log)


@dataclass
class RunReport:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    def p99_ttft(self, faults: bool, quiet_s: float) -> float:
        ttfts = [o.ttft_s for o in self.outcomes if o.ttft_s is not None and (o.sent_at >= quiet_s) == faults]
        if not ttfts:
            return float("nan")
        ttfts.sort()
        return ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]


def p99(outcomes: list[Outcome]) -> float:
    ttfts = sorted(o.ttft_s for o in outcomes if o.ttft_s is not None)
    return ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("nan")


# --- engines and their faults ------------------------------------------------------------------------------
def engine_port() -> int:
    """A free port below the kernel's ephemeral range: a killed engine comes back on its own port, which in
    that range an outgoing connection could take as its source port meanwhile."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default start of the range
    for _ in range(100):
        port = random.randint(10000, max(10001, low - 1))
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    return free_port_block(1)


class Engines:
    """Five one-engine clusters on fixed ports, so a killed engine can come back on the same address."""

    def __init__(self, ports: list[int], time_scale: float) -> None:
        self.ports = ports
        self.options = [
            SimOptions(
                port=p,
                served_model_name=(MODEL,),
                max_num_seqs=MAX_SEQS,
                time_scale=time_scale,
                natural_output_tokens=0,
                seed=i,
            )
            for i, p in enumerate(ports)
        ]
        self.clusters: list[SimCluster | None] = [None] * len(ports)

    @property
    def urls(self) -> list[str]:
        return [f"http://{HOST}:{p}" for p in self.ports]

    async def start(self, i: int | None = None) -> None:
        for j in [i] if i is not None else range(len(self.ports)):
            self.clusters[j] = await start_cluster(self.options[j], 1)

    async def kill(self, i: int) -> None:
        cluster = self.clusters[i]
        if cluster is not None:
            self.clusters[i] = None
            await cluster.replicas[0].kill()

    def set_faults(self, i: int, **faults: float) -> None:
        cluster = self.clusters[i]
        if cluster is not None:
            engine = cluster.engines[0]
            engine.options = replace(engine.options, faults=FaultOptions(**faults))  # type: ignore[arg-type]

    async def stop(self) -> None:
        for i in range(len(self.ports)):
            cluster = self.clusters[i]
            self.clusters[i] = None
            if cluster is not None:
                await cluster.stop()


class FakeKubeApi:
    """The part of the Kubernetes API the gateway's watch uses, for one pod: its list, then its changes
    (a deletion timestamp, the pod gone, a new pod at the same address)."""

    def __init__(self, ip: str, name: str = "vllm-3") -> None:
        self.ip = ip
        self.name = name
        self.rv = 1
        self.state = "running"  # running | deleting | gone
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.url = ""

    def pod(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": "llm", "resourceVersion": str(self.rv)}
        if self.state != "running":
            meta["deletionTimestamp"] = "2026-12-03T00:00:00Z"
        status = {
            "phase": "Failed" if self.state == "gone" else "Running",
            "podIP": self.ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        return {"metadata": meta, "status": status}

    async def _event(self, kind: str, state: str) -> None:
        self.rv += 1
        self.state = state
        await self.events.put({"type": kind, "object": self.pod()})

    async def drain(self) -> None:
        """A deletion timestamp (Spot interruption notice, scale-in, rollout): no new requests."""
        await self._event("MODIFIED", "deleting")

    async def delete(self) -> None:
        await self._event("DELETED", "gone")

    async def add(self) -> None:
        """A new pod at the same address (after `delete`)."""
        await self._event("ADDED", "running")

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/api/v1/namespaces/llm/pods", self._pods)])
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        port = free_port_block(1)
        await web.TCPSite(self.runner, HOST, port).start()
        self.url = f"http://{HOST}:{port}"

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "1":
            items = [] if self.state == "gone" else [self.pod()]
            return web.json_response({"metadata": {"resourceVersion": str(self.rv)}, "items": items})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        while (event := await self.events.get()) is not None:
            await resp.write(json.dumps(event).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def stop(self) -> None:
        await self.events.put(None)
        if self.runner is not None:
            await self.runner.cleanup()


async def at(t0: float, t: float, stretch: float) -> None:
    delay = t0 + t * stretch - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def schedule(
    engines: Engines, kube: FakeKubeApi, stretch: float, t0: float, with_bedrock: bool
) -> list[str]:
    """Runs the fault schedule; returns what happened when, for the report."""
    log: list[str] = []

    def note(what: str) -> None:
        log.append(f"{time.perf_counter() - t0:6.1f} s  {what}")

    await at(t0, 15, stretch)
    await engines.kill(0)
    note("engine 0 killed mid-stream")
    await at(t0, 25, stretch)
    engines.set_faults(1, stall_rate=1.0, stall_s=20.0 * stretch)
    note("engine 1 stalls")
    await at(t0, 30, stretch)
    await engines.start(0)
    note("engine 0 back")
    await at(t0, 40, stretch)
    engines.set_faults(2, error_rate=0.3)
    note("engine 2 answers 30 % with HTTP 500")
    await at(t0, 45, stretch)
    engines.set_faults(1)
    note("engine 1 stops stalling (requests already held stay held for 20 s)")
    await at(t0, 50, stretch)
    await kube.drain()
    note("engine 3 gets a deletion timestamp")
    await at(t0, 60, stretch)
    engines.set_faults(2)
    await engines.kill(3)
    await kube.delete()
    note("engine 3 killed (end of its grace period); engine 2 healthy again")
    if with_bedrock:
        await at(t0, 65, stretch)
        for i in (0, 1, 2, 4):
            await engines.kill(i)
        note("every self-hosted engine down (Bedrock stub is the last tier)")
        await at(t0, 95, stretch)
        for i in (0, 1, 2, 4):
            await engines.start(i)
        note("self-hosted engines back")
    return log


async def graceful_schedule(
    kubes: list[FakeKubeApi], stretch: float, t0: float, with_bedrock: bool
) -> list[str]:
    """The control: the fault schedule's capacity timeline with nothing to detect. Each engine the faults
    take out is drained through the Kubernetes watch when its fault starts (no new requests; those in flight
    finish) and comes back as a new pod when it ends; the engine answering 500s is kept and answers well (a
    fast 500 retried elsewhere costs next to no capacity). What is left is what any router could do with the
    engines left."""
    log: list[str] = []

    def note(what: str) -> None:
        log.append(f"{time.perf_counter() - t0:6.1f} s  {what}")

    async def back(i: int) -> None:
        await kubes[i].delete()
        await kubes[i].add()

    await at(t0, 15, stretch)
    await kubes[0].drain()
    note("engine 0 drained (killed in the faults)")
    await at(t0, 25, stretch)
    await kubes[1].drain()
    note("engine 1 drained (stalls in the faults)")
    await at(t0, 30, stretch)
    await back(0)
    note("engine 0 back")
    await at(t0, 45, stretch)
    await back(1)
    note("engine 1 back")
    await at(t0, 50, stretch)
    await kubes[3].drain()
    note("engine 3 drained")
    await at(t0, 60, stretch)
    await kubes[3].delete()
    note("engine 3 gone")
    if with_bedrock:
        await at(t0, 65, stretch)
        for i in (0, 1, 2, 4):
            await kubes[i].drain()
        note("every self-hosted engine drained (Bedrock stub is the last tier)")
        await at(t0, 95, stretch)
        for i in (0, 1, 2, 4):
            await back(i)
        note("self-hosted engines back")
    return log


# Stretches of the schedule (start, label) a request is counted in by its send time.
WINDOWS = (
    (0.0, "quiet"),
    (15.0, "engine 0 killed"),
    (25.0, "0 down + 1 stalls"),
    (30.0, "1 stalls"),
    (40.0, "2 answers 500s"),
    (50.0, "3 draining"),
    (60.0, "3 gone"),
    (65.0, "all self-hosted down"),
    (95.0, "engines back"),
)


def window_of(sent_at: float, stretch: float) -> str:
    label = WINDOWS[0][1]
    for start, name in WINDOWS:
        if sent_at >= start * stretch:
            label = name
    return label


# --- load ------------------------------------------------------------------------------------------------
def chat_body(i: int) -> dict[str, Any]:
    question = f"request {i}: say something about the number {i * 7919 % 1000}"
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": OUTPUT_TOKENS,
        "stream": True,
    }


async def one_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any], out: Outcome) -> None:
    started = time.perf_counter()
    headers = {"x-request-id": out.request_id} if out.request_id else None
    try:
        async with asyncio.timeout(DEADLINE_S):
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                out.pool = r.headers.get("x-eksinfer-pool", "")
                if r.status != 200:
                    text = await r.text()
                    try:
                        code = json.loads(text).get("error", {}).get("code")
                    except (ValueError, AttributeError):
                        code = None
                    out.kind, out.detail = "failed", f"{r.status} {code or ''}".strip()
                    return
                done = errored = False
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    if line == b"data: [DONE]":
                        done = True
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        errored = True
                        out.detail = str((chunk["error"] or {}).get("code") or "error")
                        continue
                    choices = chunk.get("choices") or []
                    if out.ttft_s is None and choices and (choices[0].get("delta") or {}).get("content"):
                        out.ttft_s = time.perf_counter() - started
                out.kind = "ok" if done and not errored else ("broken_event" if errored else "broken_cut")
    except TimeoutError:
        out.kind = "hung"
    except aiohttp.ClientError as err:
        out.kind, out.detail = (
            ("broken_cut", type(err).__name__) if out.ttft_s else ("failed", type(err).__name__)
        )


async def calibrate(urls: list[str], seconds: float) -> float:
    """Requests per second the engines sustain, measured with a closed loop straight to them: requests that
    end inside the window, after a warm-up as long as one request."""
    done = 0
    start_at = stop_at = 0.0
    async with aiohttp.ClientSession() as session:

        async def worker(k: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop_at:
                out = Outcome(0.0)
                await one_request(session, urls[(k + i) % len(urls)], chat_body(k * 1000 + i), out)
                i += 1
                done += out.kind == "ok" and start_at <= time.perf_counter() <= stop_at

        probe_started = time.perf_counter()
        await one_request(session, urls[0], chat_body(0), Outcome(0.0))
        latency_s = time.perf_counter() - probe_started
        start_at = time.perf_counter() + latency_s  # warm-up: the length of one request
        stop_at = start_at + seconds

        await asyncio.gather(*(worker(k) for k in range(len(urls) * MAX_SEQS * 2)))
    return done / seconds


async def run_load(url: str, rate: float, duration_s: float, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    sends, t = [], 0.0
    while t < duration_s:
        sends.append(t)
        t += rng.expovariate(rate)
    outcomes = [Outcome(at, request_id=f"bench-{seed}-{i}") for i, at in enumerate(sends)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        start = time.perf_counter()

        async def fire(i: int, out: Outcome) -> None:
            delay = start + out.sent_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await one_request(session, url, chat_body(i), out)

        await asyncio.gather(*(fire(i, o) for i, o in enumerate(outcomes)))
    return outcomes


# --- targets ---------------------------------------------------------------------------------------------
def bedrock_available() -> bool:
    """The Bedrock pool kind and its local stub (eksinfer.sim.bedrock) are part of this build."""
    return importlib.util.find_spec("eksinfer.sim.bedrock") is not None


def gateway_config(
    engines: Engines, kubes: dict[int, FakeKubeApi], port: int, token: Path, bedrock_url: str | None
) -> dict[str, Any]:
    """Engines in `kubes` (by index) are found through their fake Kubernetes API, the others are static."""
    cascade = ["eks", "bedrock"] if bedrock_url else ["eks"]
    pools: dict[str, Any] = {"eks": {"kind": "vllm"}}
    if bedrock_url:
        pools["bedrock"] = {
            "kind": "bedrock",
            "region": "us-east-1",
            "endpoint_url": bedrock_url,
            "models": {MODEL: BEDROCK_MODEL_ID},
            # Sized for the load: a stream holds a slot for its whole answer, ~13 s on the engines' clock.
            "max_concurrency": 256,
        }
    return {
        "server": {"host": HOST, "port": port, "first_token_timeout_s": 30, "idle_stream_timeout_s": 10},
        "endpoints": {
            "static": [
                {"url": u, "pool": "eks", "models": [MODEL]}
                for i, u in enumerate(engines.urls)
                if i not in kubes
            ],
            "kubernetes": [
                {
                    "namespace": "llm",
                    "label_selector": f"app=vllm,engine={i}",
                    "port": engines.ports[i],
                    "pool": "eks",
                    "api_server": kube.url,
                    "token_file": str(token),
                    "ca_file": str(token.with_suffix(".none")),
                }
                for i, kube in sorted(kubes.items())
            ],
        },
        "scrape": {"interval_s": 0.2},
        "routing": {"preset": "load", "debug_header": None},
        "pools": pools,
        # With a Bedrock tier, a pool whose predicted TTFT passes 3 s (twice the quiet P99) sheds to it.
        "models": {
            MODEL: {"cascade": cascade, "continue_streams": True, "ttft_slo_s": 3.0 if bedrock_url else None}
        },
        "resilience": {"health_checks": {"interval_s": 1.0}, "stall_after_s": 1.5},
        # One JSON line per request (to the bench's file): `ttft_parts_s` says where each TTFT went.
        "observability": {"access_log": True},
    }


def spawn(cmd: list[str], env: dict[str, str], stdout: Any = None) -> subprocess.Popen[bytes]:
    """A child with stderr in a temporary file and stdout (the gateway's access log) where asked."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process object)
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=log, env=env)
    proc.eksinfer_log = log  # type: ignore[attr-defined]
    return proc


def read_access_log(path: Path, outcomes: list[Outcome]) -> None:
    """Joins the gateway's access log (one JSON line per request) to the outcomes by request id."""
    by_id = {o.request_id: o for o in outcomes}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out = by_id.get(rec.get("request_id", ""))
        if out is not None:
            out.parts = rec.get("ttft_parts_s")


def proc_stats(pid: int) -> tuple[int, float, int]:
    """Open file descriptors, resident MB and threads of a process (Linux /proc)."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return fds, rss, threads


async def until_answered_by(url: str, pool: str, deadline_s: float = 30.0) -> None:
    """Sends one-token chats until `pool` answers one: the gateway's view has caught up with the schedule
    (a cascade reaches its next tier only when the pool before it has no endpoint left)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    async with aiohttp.ClientSession() as session:
        while loop.time() < end:
            async with session.post(f"{url}/v1/chat/completions", json=body) as r:
                await r.read()
                if r.headers.get("x-eksinfer-pool") == pool:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"no answer from pool {pool!r} within {deadline_s:.0f} s")


async def gateway_metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
        text = await r.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            label = s.labels.get("action") or s.labels.get("kind") or s.labels.get("reason")
            key = s.name + ("{" + label + "}" if label and not s.name.endswith("_bucket") else "")
            totals[key] = totals.get(key, 0.0) + s.value
    return totals


async def run_target(
    name: str, args: argparse.Namespace, rate: float, work: Path, passes: int
) -> list[RunReport] | str:
    """Runs the schedule `passes` times through one target process (fresh engines each pass): the first
    pass warms what is built on first use (the Bedrock client), the second shows whether anything grows.
    `name` "control" runs the gateway through the graceful schedule instead (every engine found through the
    fake Kubernetes API, so it can be drained), then, with the Bedrock tier, the load on Bedrock alone."""
    ports = [engine_port() for _ in range(ENGINES)]
    engines = Engines(ports, args.time_scale)
    await engines.start()
    control = name == "control"
    gateway = name in ("eksinfer", "control")
    kubes = {i: FakeKubeApi(HOST, f"vllm-{i}") for i in (range(ENGINES) if control else (3,))}
    for kube in kubes.values():
        await kube.start()
    reports: list[RunReport] = []
    proc = None
    access = None
    stub: Any = None
    with_bedrock = bedrock_available()
    work = work / name
    work.mkdir(parents=True, exist_ok=True)
    try:
        port = free_port_block(1)
        if with_bedrock:
            from eksinfer.sim.bedrock import start_stub

            # Bedrock's own latency on the engines' clock (`--time-scale` slows both alike).
            stub = await start_stub(
                HOST,
                0,
                output_tokens=OUTPUT_TOKENS,
                first_token_s=args.bedrock_ttft_s * args.time_scale,
                tokens_per_s=args.bedrock_tokens_per_s / args.time_scale,
                latency_jitter=0.2,
                seed=7,
            )
        if gateway:
            token = work / "token"
            token.write_text("bench\n")
            config = work / "gateway.yaml"
            bedrock_url = stub.url if stub is not None else None
            config.write_text(yaml.safe_dump(gateway_config(engines, kubes, port, token, bedrock_url)))
            exe = str(Path(sys.executable).with_name("eksinfer"))
            # Fake credentials for botocore's signer: the stub does not check them, nothing reaches AWS.
            env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            env.update(AWS_CONFIG_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
            access = (work / "access.jsonl").open("wb")
            cmd = [exe, "gateway", "--config", str(config), "--log-level", args.gateway_log_level]
            proc = spawn(cmd, env, access)
        else:
            exe = vllm_router_exe()
            if exe is None:
                return "vllm-router could not be installed"
            cmd = [exe, "--host", HOST, "--port", str(port), "--policy", "power_of_two", "--worker-urls"]
            cmd += [*engines.urls, "--prometheus-host", HOST, "--prometheus-port", str(free_port_block(1))]
            cmd += ["--log-level", "error"]
            proc = spawn(cmd, dict(os.environ, HF_HUB_OFFLINE="1"))
        url = f"http://{HOST}:{port}"
        await wait_http([f"{url}/health"], proc)
        if gateway:
            await wait_http([f"{url}/ready"], proc)
        previous: dict[str, float] = {}
        for n in range(passes):
            if n:  # engine 3 comes back as a new pod (the control never stopped it); the others are back
                if not control:
                    await engines.start(3)
                await kubes[3].add()
            await asyncio.sleep(1.0 if gateway else 2.0)  # the watch and the scrapes fill in
            report = RunReport(name if passes == 1 else f"{name} #{n + 1}")
            before = proc_stats(proc.pid)
            t0 = time.perf_counter()
            if control:
                timeline = graceful_schedule(list(kubes.values()), args.stretch, t0, with_bedrock)
            else:
                timeline = schedule(engines, kubes[3], args.stretch, t0, with_bedrock)
            faults = asyncio.create_task(timeline)
            load_s = (100.0 if with_bedrock else 70.0) * args.stretch
            report.outcomes = await run_load(
                url, rate, load_s, seed=1 + n
            )  # the same arrivals in each target
            report.extra["schedule"] = await faults
            await asyncio.sleep(6.0)  # past the engine keep-alive (4 s): idle connections are closed by then
            after = proc_stats(proc.pid)
            report.extra["fds"] = (before[0], after[0])
            report.extra["rss_mb"] = (before[1], after[1])
            report.extra["threads"] = (before[2], after[2])
            if gateway:
                totals = await gateway_metrics(url)
                report.extra["metrics"] = {  # this pass's counts; gauges as they are
                    k: v if "inflight" in k else v - previous.get(k, 0.0) for k, v in totals.items()
                }
                previous = totals
                read_access_log(work / "access.jsonl", report.outcomes)
            reports.append(report)
        if control and with_bedrock:
            # Bedrock alone, quiet: every engine drained, the same load for as long as the outage lasts.
            for i in (0, 1, 2, 4):
                await kubes[i].drain()
            await until_answered_by(url, "bedrock")  # the gateway has seen every drain
            alone = RunReport("Bedrock alone")
            alone.outcomes = await run_load(url, rate, 30.0 * args.stretch, seed=99)
            read_access_log(work / "access.jsonl", alone.outcomes)
            reports.append(alone)
        if gateway:
            log = getattr(proc, "eksinfer_log", None)
            if log is not None:  # the gateway's warnings (ejections, stalls, circuit changes), for a look
                log.seek(0)
                (work / "gateway.log").write_bytes(log.read())
                reports[-1].extra["log"] = str(work / "gateway.log")
        if proc.poll() is not None:
            return f"{name} exited: {stderr_tail(proc)}"
        return reports
    finally:
        stop_proc(proc)
        if access is not None:
            access.close()
        if stub is not None:
            await stub.stop()
        for kube in kubes.values():
            await kube.stop()
        await engines.stop()


# --- report ----------------------------------------------------------------------------------------------
def print_report(
    reports: list[RunReport | str], names: list[str], quiet_s: float, stretch: float = 1.0
) -> None:
    kinds = ("ok", "failed", "broken_event", "broken_cut", "hung")
    print(
        f"{'target':<16}{'requests':>9}"
        + "".join(f"{k:>13}" for k in kinds)
        + f"{'TTFT P99 quiet':>16}{'faults':>8}{'ratio':>7}"
    )
    for name, rep in zip(names, reports, strict=True):
        if isinstance(rep, str):
            print(f"{name:<16}skipped: {rep}")
            continue
        c = rep.counts()
        quiet, faulty = rep.p99_ttft(False, quiet_s), rep.p99_ttft(True, quiet_s)
        row = f"{name:<16}{len(rep.outcomes):>9}" + "".join(f"{c.get(k, 0):>13}" for k in kinds)
        print(row + f"{quiet:>15.3f}s{faulty:>7.3f}s{faulty / quiet:>7.2f}")
    for name, rep in zip(names, reports, strict=True):
        if isinstance(rep, str):
            continue
        print(f"\n{name}:")
        pools = Counter(o.pool or "-" for o in rep.outcomes if o.kind == "ok")
        if any(p != "-" for p in pools):
            print("  answered by pool: " + ", ".join(f"{p} {n}" for p, n in sorted(pools.items())))
        details = Counter(f"{o.kind}: {o.detail or '-'}" for o in rep.outcomes if o.kind != "ok")
        for what, n in sorted(details.items()):
            print(f"  {n:5d}  {what}")
        if "fds" in rep.extra:
            fds, rss = rep.extra["fds"], rep.extra["rss_mb"]
            print(f"  open fds {fds[0]} -> {fds[1]}; resident {rss[0]:.0f} -> {rss[1]:.0f} MB")
        m = rep.extra.get("metrics")
        if m:
            print(
                "  in flight after the load: "
                f"{m.get('eksinfer_gateway_inflight_requests', float('nan')):.0f} requests, "
                f"{m.get('eksinfer_gateway_retries_inflight', float('nan')):.0f} retries; "
                "stream breaks continued "
                f"{m.get('eksinfer_gateway_stream_breaks_total{continued}', 0):.0f}, "
                "ended with an error event "
                f"{m.get('eksinfer_gateway_stream_breaks_total{error_event}', 0):.0f}; "
                f"retries {m.get('eksinfer_gateway_upstream_retries_total', 0):.0f}; "
                f"ejections {m.get('eksinfer_gateway_outlier_ejections_total', 0):.0f}"
            )
        if m:
            failures = {k.split("{")[1][:-1]: v for k, v in m.items() if k.startswith(ATTEMPTS + "{")}
            skipped = {k.split("{")[1][:-1]: v for k, v in m.items() if k.startswith(FALLBACKS + "{")}
            print(
                "  failed attempts: "
                + (", ".join(f"{k} {v:.0f}" for k, v in sorted(failures.items())) or "0")
            )
            print(
                "  tiers passed over: "
                + (", ".join(f"{k} {v:.0f}" for k, v in sorted(skipped.items())) or "0")
            )
            print(f"  stalls found by the watchdog: {m.get('eksinfer_gateway_stalls_total', 0):.0f}")
        if any(o.parts for o in rep.outcomes):
            print_breakdown(rep, quiet_s, stretch)
        if "log" in rep.extra:
            print(f"  gateway log: {rep.extra['log']}")
        for line in rep.extra.get("schedule", []):
            print("  " + line)


def print_breakdown(rep: RunReport, quiet_s: float, stretch: float) -> None:
    """Where the TTFT went, per stretch of the schedule: for requests slower than twice the quiet P99, the
    mean of each part of the gateway's `ttft_parts_s` (upstream: the answering endpoint's queue and
    prefill, or Bedrock's first token; first_token_timeout: waits the stall watchdog ended; connect, status,
    broken: failed attempts; backoff; gateway: its own time)."""
    limit = 2 * rep.p99_ttft(False, quiet_s)
    rows: dict[str, list[Outcome]] = {}
    for o in rep.outcomes:
        rows.setdefault(window_of(o.sent_at, stretch), []).append(o)
    parts = ("upstream", "first_token_timeout", "connect", "status", "broken", "backoff", "gateway")
    print(f"\n  TTFT per stretch of the schedule; slow: above {limit:.2f} s (2x quiet P99); parts: mean s")
    print(
        f"  {'stretch':<22}{'sent':>5}{'P99':>7}{'slow':>5}  {'answered by':<20}"
        + "".join(f"{p[:9]:>10}" for p in parts)
    )
    for _, label in WINDOWS:
        group = rows.get(label, [])
        ttfts = sorted(o.ttft_s for o in group if o.ttft_s is not None)
        if not group:
            continue
        p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("nan")
        slow = [o for o in group if o.ttft_s is not None and o.ttft_s > limit]
        pools = Counter(o.pool or "-" for o in slow)
        by = ", ".join(f"{p} {n}" for p, n in sorted(pools.items()))
        known = [o.parts for o in slow if o.parts]
        means = [sum(k.get(p, 0.0) for k in known) / len(known) if known else 0.0 for p in parts]
        print(
            f"  {label:<22}{len(group):>5}{p99:>6.2f}s{len(slow):>5}  {by:<20}"
            + "".join(f"{m:>10.2f}" for m in means)
        )


def stretch_groups(rep: RunReport, stretch: float) -> dict[str, list[Outcome]]:
    rows: dict[str, list[Outcome]] = {}
    for o in rep.outcomes:
        rows.setdefault(window_of(o.sent_at, stretch), []).append(o)
    return rows


def print_against_control(
    faulted: RunReport, control: RunReport, alone: RunReport | None, args: argparse.Namespace
) -> None:
    """Per stretch, the faulted run's TTFT P99 next to the control's (the same arrivals and the same engines
    lost and back at the same times, but drained cleanly: nothing to detect, retry or wait out) and the
    quiet period's. The control is what any router could do with the capacity left; the faulted run's
    excess over it is the gateway's (detection, retries, backoff, stall waits, ejections longer than the
    fault); the control's excess over quiet is lost capacity, or the last tier's own latency."""
    stretch = args.stretch
    quiet_s = QUIET_S * stretch
    quiet = faulted.p99_ttft(False, quiet_s)
    limit = 2 * quiet
    f_rows, c_rows = stretch_groups(faulted, stretch), stretch_groups(control, stretch)
    print(
        f"\n{faulted.name} against {control.name} (same arrivals, same capacity timeline, faults replaced by "
        f"clean removal); quiet P99 {quiet:.2f} s (control's {control.p99_ttft(False, quiet_s):.2f} s); "
        f"slow: above {limit:.2f} s"
    )
    print(
        f"  {'stretch':<22}{'sent':>5}{'faults':>8}{'control':>8}{'gateway':>9}"
        f"{'faults/quiet':>13}{'control/quiet':>14}{'slow':>6}{'(ctl)':>6}"
    )
    for _, label in WINDOWS:
        got, ctl = f_rows.get(label, []), c_rows.get(label, [])
        if not got:
            continue
        fp, cp = p99(got), p99(ctl)
        slow = sum(1 for o in got if o.ttft_s is not None and o.ttft_s > limit)
        cslow = sum(1 for o in ctl if o.ttft_s is not None and o.ttft_s > limit)
        print(
            f"  {label:<22}{len(got):>5}{fp:>7.2f}s{cp:>7.2f}s{fp - cp:>+8.2f}s"
            f"{fp / quiet:>12.2f}x{cp / quiet:>13.2f}x{slow:>6}{cslow:>6}"
        )

    def span(rep: RunReport, lo: float, hi: float) -> float:
        return p99([o for o in rep.outcomes if lo * stretch <= o.sent_at < hi * stretch])

    pooled = p99([o for r in (faulted, control) for o in r.outcomes if o.sent_at < quiet_s])
    print(
        f"  quiet P99 of both runs' quiet periods together: {pooled:.2f} s (one run's is nearly its maximum)"
    )
    end = 1e9
    rows = [("all faults (15 s to the end)", 15.0, end)]
    if bedrock_available():
        rows += [
            ("self-hosted capacity left (15-65 s)", 15.0, 65.0),
            ("all self-hosted down (65-95 s)", 65.0, 95.0),
        ]
    for label, lo, hi in rows:
        fp, cp = span(faulted, lo, hi), span(control, lo, hi)
        share = (fp - cp) / (fp - quiet) if fp > quiet else float("nan")
        print(
            f"  {label}: TTFT P99 faults {fp:.2f} s ({fp / quiet:.2f}x quiet), control {cp:.2f} s "
            f"({cp / quiet:.2f}x quiet); the gateway's part of the excess over quiet {share:.0%}"
        )
    left = span(faulted, 15.0, 65.0 if bedrock_available() else end) / span(
        control, 15.0, 65.0 if bedrock_available() else end
    )
    verdict = f"  the gateway's own tail: with self-hosted capacity left, faults P99 / control P99 {left:.2f}"
    if alone is not None:
        ap = p99(alone.outcomes)
        down = span(faulted, 65.0, 95.0)
        c = alone.counts()
        print(
            f"  Bedrock alone, quiet ({len(alone.outcomes)} requests at the same rate, {c.get('ok', 0)} ok): "
            f"TTFT P99 {ap:.2f} s; all self-hosted down: faults {down:.2f} s = {down / ap:.2f}x Bedrock "
            f"alone, control {span(control, 65.0, 95.0) / ap:.2f}x"
        )
        verdict += f"; all self-hosted down, faults P99 / Bedrock alone P99 {down / ap:.2f}"
    print(
        verdict
        + " (2x each: "
        + ("met" if left <= 2 and (alone is None or down / ap <= 2) else "MISSED")
        + ")"
    )


def main(argv: list[str]) -> None:
    # Killed engines' handlers fail their writes by design; aiohttp would print each traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(prog="bench_faults")
    ap.add_argument("--no-vllm-router", action="store_true")
    ap.add_argument("--stretch", type=float, default=1.0, help="multiply every time of the schedule")
    ap.add_argument(
        "--passes", type=int, default=2, help="fault schedules run through one gateway (memory flat?)"
    )
    ap.add_argument(
        "--control-passes",
        type=int,
        default=1,
        help="passes of the control (graceful removal instead of faults, paired with the faulted passes by "
        "their arrivals; then Bedrock alone): about 2 minutes each, 0 skips it",
    )
    ap.add_argument(
        "--bedrock-ttft-s",
        type=float,
        default=0.76,
        help="Bedrock's own time to first token (Artificial Analysis, Claude 3 Sonnet on Bedrock, median)",
    )
    ap.add_argument(
        "--bedrock-tokens-per-s", type=float, default=60.0, help="Bedrock's output tokens per second"
    )
    ap.add_argument(
        "--gateway-log-level",
        default="warning",
        help="the gateway's log level (info adds readmissions, slow starts, circuit trials)",
    )
    ap.add_argument(
        "--time-scale", type=float, default=10.0, help="simulator wall seconds per simulated second"
    )
    args = ap.parse_args(argv)
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="eksinfer-bench-faults-"))
    ports = [engine_port() for _ in range(ENGINES)]
    engines = Engines(ports, args.time_scale)
    await engines.start()
    try:
        await wait_http([f"{u}/health" for u in engines.urls], None)
        capacity = await calibrate(engines.urls, 8.0)
    finally:
        await engines.stop()
    rate = LOAD_SHARE * capacity
    print(
        f"capacity {capacity:.1f} req/s (closed loop, straight to {ENGINES} engines); load {rate:.1f} req/s"
    )
    if bedrock_available():
        print(
            f"Bedrock stub: first token {args.bedrock_ttft_s:g} s, {args.bedrock_tokens_per_s:g} tokens/s "
            f"(x{args.time_scale:g} on the engines' clock)"
        )
    reports: list[RunReport | str] = []
    names: list[str] = []
    alone: RunReport | None = None
    control: list[RunReport] = []
    targets = (("eksinfer", args.passes), ("control", args.control_passes), ("vllm-router", 1))
    for name, passes in targets:
        if (name == "vllm-router" and args.no_vllm_router) or passes < 1:
            continue
        got = await run_target(name, args, rate, work, passes)
        if name == "control" and not isinstance(got, str):
            control = [r for r in got if r.name != "Bedrock alone"]
            alone = next((r for r in got if r.name == "Bedrock alone"), None)
            got = control
        reports += [got] if isinstance(got, str) else got
        names += [name] if isinstance(got, str) else [r.name for r in got]
    print_report(reports, names, QUIET_S * args.stretch, args.stretch)
    quiet_s = QUIET_S * args.stretch
    ours = [r for r in reports if isinstance(r, RunReport) and r.name.startswith("eksinfer")]
    for faulted, clean in zip(ours, control, strict=False):
        print_against_control(faulted, clean, alone, args)
    for rep in ours:
        c = rep.counts()
        quiet = rep.p99_ttft(False, quiet_s)
        print(
            f"\n{rep.name}: failed before streaming {c.get('failed', 0)} (goal 0), cut without an error "
            f"event {c.get('broken_cut', 0)} (goal 0), hung {c.get('hung', 0)} (goal 0), TTFT P99 "
            f"faults/quiet {rep.p99_ttft(True, quiet_s) / quiet:.2f} (goal <= 2)"
        )
        if bedrock_available():
            # While every self-hosted engine is down the last tier's own first token bounds the TTFT;
            # the stretches before it say what the gateway's choices did with the capacity left.
            left = p99([o for o in rep.outcomes if quiet_s <= o.sent_at < 65.0 * args.stretch])
            down = p99([o for o in rep.outcomes if 65.0 * args.stretch <= o.sent_at < 95.0 * args.stretch])
            own = args.bedrock_ttft_s * args.time_scale
            print(
                f"  with self-hosted capacity left (15-65 s): TTFT P99 {left:.2f} s, "
                f"{left / quiet:.2f}x quiet; all self-hosted down (65-95 s): P99 {down:.2f} s against the "
                f"Bedrock stub's own first token of {own:.2f} s +/- 20 % ({down / quiet:.2f}x quiet)"
            )
    if len(ours) > 1:
        rss = [ours[0].extra["rss_mb"][0], *(r.extra["rss_mb"][1] for r in ours)]
        fds = [ours[0].extra["fds"][0], *(r.extra["fds"][1] for r in ours)]
        threads = [ours[0].extra["threads"][0], *(r.extra["threads"][1] for r in ours)]
        print(
            "eksinfer resident MB before / after each pass: "
            + " / ".join(f"{m:.1f}" for m in rss)
            + "; open fds: "
            + " / ".join(str(f) for f in fds)
            + "; threads: "
            + " / ".join(str(t) for t in threads)
        )


if __name__ == "__main__":
    main(sys.argv[1:])
