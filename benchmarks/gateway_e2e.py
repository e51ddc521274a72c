"""End-to-end routing benchmark plumbing: simulated engines, the gateway and vllm-router as subprocesses, and
an open-loop streaming client for the shared-prefix workload.

Each system under test runs in its own process (the engines in one, the router in another, this client in a
third) so that none of them steals the others' event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from eksinfer.bench.config import SharedPrefixWorkload
from eksinfer.bench.prompts import random_text

MODEL = "m"
HOST = "127.0.0.1"


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer_dir(path: Path) -> Path:
    """A small byte-level BPE tokenizer trained locally on the benchmark's vocabulary (no downloads), with a
    chat template: the engines, eksinfer's gateway (mode hf) and vllm-router (VLLM_ROUTER_TOKENIZER) all load
    it, so every router tokenizes exactly as the engines do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from eksinfer.bench.prompts import WORDS

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=4096, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=64)) for _ in range(2000)]
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(path / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 32768,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    return path


def free_port_block(n: int) -> int:
    """A base port with n consecutive free ports (replicas use base + i)."""
    for _ in range(50):
        base = random.randint(20000, 60000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind((HOST, p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


@dataclass
class SimCluster:
    """`replicas` engines in one subprocess; replica i: HTTP base+i, events ev+i, replay rp+i."""

    replicas: int
    num_gpu_blocks: int
    time_scale: float
    tokenizer_dir: Path | None = None
    http_base: int = 0
    ev_base: int = 0
    rp_base: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://{HOST}:{self.http_base + i}" for i in range(self.replicas)]

    @property
    def event_endpoints(self) -> list[str]:
        return [f"tcp://{HOST}:{self.ev_base + i}" for i in range(self.replicas)]

    @property
    def replay_endpoints(self) -> list[str]:
        return [f"tcp://{HOST}:{self.rp_base + i}" for i in range(self.replicas)]

    async def start(self) -> None:
        self.http_base = free_port_block(self.replicas)
        self.ev_base = free_port_block(self.replicas)
        self.rp_base = free_port_block(self.replicas)
        code = (
            "from eksinfer.sim.config import SimOptions\n"
            "from eksinfer.sim.run import serve\n"
            "from eksinfer.kvcache.events import KVEventsConfig\n"
            f"ev = KVEventsConfig(enable_kv_cache_events=True, publisher='zmq', endpoint='tcp://*:{self.ev_base}',"
            f" replay_endpoint='tcp://*:{self.rp_base}', topic='kv@{{host}}:{{port}}@{{model}}')\n"
            f"opts = SimOptions(port={self.http_base}, served_model_name=('{MODEL}',),"
            f" time_scale={self.time_scale}, num_gpu_blocks={self.num_gpu_blocks}, kv_events=ev, seed=1,"
            f" tokenizer={str(self.tokenizer_dir) if self.tokenizer_dir else None!r})\n"
            f"serve(opts, {self.replicas}, log_level='warning')\n"
        )
        self.proc = spawn([sys.executable, "-c", code])
        await wait_http([f"{u}/health" for u in self.urls], self.proc)

    def stop(self) -> None:
        stop_proc(self.proc)


def spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child with stderr in a temporary file (a pipe nobody reads would block a chatty child)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process object)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    proc.eksinfer_log = log  # type: ignore[attr-defined]
    return proc


def stderr_tail(proc: subprocess.Popen[bytes]) -> str:
    log = getattr(proc, "eksinfer_log", None)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def wait_http(urls: Sequence[str], proc: subprocess.Popen[bytes] | None, timeout_s: float = 60) -> None:
    """Poll until every URL answers 200 (raises with the process's stderr if it died)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for url in urls:
            while True:
                if proc is not None and proc.poll() is not None:
                    err = stderr_tail(proc)
                    raise RuntimeError(f"process exited ({proc.returncode}) before {url} was up: {err}")
                try:
                    async with session.get(url) as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not up after {timeout_s} s")
                await asyncio.sleep(0.2)


def start_gateway(
    cluster: SimCluster, preset: str, workdir: Path, profiles: dict[str, Any] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`eksinfer gateway` in front of the cluster, subscribed to every replica's KV events."""
    port = free_port_block(1)
    config = {
        "server": {"host": HOST, "port": port},
        "endpoints": {
            "static": [
                {"url": u, "kv_events": e, "models": [MODEL]}
                for u, e in zip(cluster.urls, cluster.event_endpoints, strict=True)
            ]
        },
        "scrape": {"interval_s": 0.25},
        "routing": {
            "preset": preset,
            "tokenizer": (
                {"mode": "hf", "path": str(cluster.tokenizer_dir)}
                if cluster.tokenizer_dir
                else {"mode": "builtin"}
            ),
            "events": {"replay_port_offset": cluster.rp_base - cluster.ev_base},
            "debug_header": None,
            "profiles": profiles or {},
        },
    }
    path = workdir / f"gateway-{preset}.yaml"
    path.write_text(yaml.safe_dump(config))
    exe = str(Path(sys.executable).with_name("eksinfer"))
    proc = spawn([exe, "gateway", "--config", str(path), "--log-level", "warning"])
    return proc, f"http://{HOST}:{port}"


def vllm_router_exe() -> str | None:
    """The vllm-router binary, installed into this venv on demand (PyPI `vllm-router`); None if impossible."""
    exe = Path(sys.executable).with_name("vllm-router")
    if exe.exists():
        return str(exe)
    found = shutil.which("vllm-router")
    if found:
        return found
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "vllm-router"],
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return str(exe) if exe.exists() else None


def start_vllm_router(exe: str, cluster: SimCluster, policy: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port_block(1)
    cmd = [exe, "--host", HOST, "--port", str(port), "--policy", policy, "--worker-urls", *cluster.urls]
    # The Prometheus listener defaults to port 29000, which another vllm-router on the machine may hold.
    cmd += ["--prometheus-host", HOST, "--prometheus-port", str(free_port_block(1))]
    cmd += [
        "--log-level",
        os.environ.get("VR_LOG", "warning"),
        "--disable-retries",
        "--disable-circuit-breaker",
    ]
    if policy == "kv_aware":
        for url, ev, rp in zip(cluster.urls, cluster.event_endpoints, cluster.replay_endpoints, strict=True):
            cmd += ["--kv-event-source", f"{url}={ev}", "--kv-event-replay-source", f"{url}={rp}"]
        cmd += ["--kv-event-block-size", "16", "--kv-event-model", MODEL]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if cluster.tokenizer_dir is not None:
        env["VLLM_ROUTER_TOKENIZER"] = str(cluster.tokenizer_dir)
    proc = spawn(cmd, env)
    return proc, f"http://{HOST}:{port}"


async def scrape_prefix(urls: Sequence[str]) -> tuple[float, float]:
    """Sum of vllm:prefix_cache_hits_total and queries_total over the engines."""
    hits = queries = 0.0
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.get(f"{url}/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith("vllm:prefix_cache_hits_total"):
                    hits += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_queries_total"):
                    queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


@dataclass
class RunResult:
    ttft_s: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    output_tokens: int = 0
    duration_s: float = 0.0
    hit_rate: float = 0.0

    def p(self, q: float) -> float:
        values = sorted(self.ttft_s)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    @property
    def req_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0


def workload_requests(w: SharedPrefixWorkload, seed: int) -> list[dict[str, Any]]:
    """inference-perf's shared_prefix: group g's prompts share system prompt g; seeded random order."""
    rng = random.Random(seed)
    systems = [random_text(rng, w.system_prompt_len) for _ in range(w.num_groups)]
    pairs = [
        (g, random_text(rng, w.question_len))
        for g in range(w.num_groups)
        for _ in range(w.num_prompts_per_group)
    ]
    if w.shuffle:
        rng.shuffle(pairs)
    return [
        {
            "_group": g,
            "model": MODEL,
            "messages": [{"role": "system", "content": systems[g]}, {"role": "user", "content": q}],
            "max_tokens": w.output_len,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for g, q in pairs
    ]


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any], result: RunResult) -> None:
    body = {k: v for k, v in body.items() if k != "_group"}
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as r:
            if r.status != 200:
                result.errors += 1
                await r.read()
                return
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter() - started
                elif chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", tokens)
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1
        return
    if first is None:
        result.errors += 1
        return
    result.ttft_s.append(first)
    result.ok += 1
    result.output_tokens += tokens


async def run_load(
    url: str | None, engine_urls: Sequence[str], bodies: Sequence[dict[str, Any]], rate: float, seed: int
) -> RunResult:
    """Open-loop Poisson arrivals at `rate` req/s (send times drawn up front), all requests streamed. With
    `url` None each request goes straight to engine `group mod replicas`: the ideal static placement."""
    rng = random.Random(seed)
    send_at, t = [], 0.0
    for _ in bodies:
        send_at.append(t)
        t += rng.expovariate(rate)
    result = RunResult()
    hits0, queries0 = await scrape_prefix(engine_urls)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def fire(at: float, body: dict[str, Any]) -> None:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            target = url or engine_urls[body["_group"] % len(engine_urls)]
            await _one(session, target, body, result)

        await asyncio.gather(*(fire(at, b) for at, b in zip(send_at, bodies, strict=True)))
        result.duration_s = time.perf_counter() - start
    hits1, queries1 = await scrape_prefix(engine_urls)
    result.hit_rate = (hits1 - hits0) / (queries1 - queries0) if queries1 > queries0 else 0.0
    return result


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="eksinfer-bench-gw-"))
