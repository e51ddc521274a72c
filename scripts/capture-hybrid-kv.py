"""Capture a real vLLM's KV events for a hybrid KV cache (sliding window + full attention): a golden fixture.

Why: the gateway's prefix index (src/eksinfer/kvcache) must read the events of hybrid engines, whose
sliding group publishes only the blocks it keeps, re-publishes hashes and evicts per group. Tests in
tests/kvcache replay this capture (tests/kvcache/data/vllm_hybrid_kv_events.json) instead of trusting a
hand-written model of vLLM.

What it does: builds a tiny random-weight GptOssForCausalLM into .live/tiny-gptoss (4 layers alternating
sliding_attention(64) and full_attention, so vLLM makes group 0 = sliding_window and group 1 = full_attention,
both block size 32), then starts `vllm serve` twice, one after the other, on 127.0.0.1 (HTTP 18580, KV events
over ZMQ on 18590):
  * run "junctions" (default pool): prompts that share 6W, 4W, 3W and 5W+16 tokens with a first prompt
    (W = 64, the window), then POST /reset_prefix_cache and one more prompt;
  * run "eviction" (--num-gpu-blocks-override 64): ten distinct prompts, then six of them again, newest first.
For each step it records the prompt's token ids, the deltas of vllm:prefix_cache_{queries,hits}_total and
every ZMQ message that followed, its payload decoded from msgpack and kept as it came.

Run (about 3 minutes: two server start-ups of about 55 s each, about 70 s of requests):

    .venv/bin/python scripts/capture-hybrid-kv.py [--out PATH] [--rebuild-model]

It needs `make test-live`'s vLLM venv (.live/venv, built by scripts/test-live.sh). Each server runs in its own
process group and is stopped on every exit path. Hash values are stable across reruns (sha256_cbor,
PYTHONHASHSEED=0, seeded prompts); the payloads' timestamps are not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import msgspec
import zmq

ROOT = Path(__file__).resolve().parent.parent
LIVE_VENV = ROOT / ".live" / "venv"
MODEL_DIR = ROOT / ".live" / "tiny-gptoss"
LOG_DIR = ROOT / ".live" / "logs"
FIXTURE = ROOT / "tests" / "kvcache" / "data" / "vllm_hybrid_kv_events.json"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

HTTP_PORT = 18580
EVENTS_PORT = 18590
BASE_URL = f"http://127.0.0.1:{HTTP_PORT}"
SERVED_NAME = "hybrid"
BLOCK_SIZE = 32
WINDOW = 64  # the model's sliding window, in tokens
TOKEN_IDS = (10, 2000)  # prompt token ids are drawn from this range (the vocabulary has 2048)

START_TIMEOUT_S = 300.0
SERVER_LIFETIME_S = 1800  # `timeout` ends a server even if this script is killed with SIGKILL
STOP_TIMEOUT_S = 30.0
QUIET_S = 2.0  # a step's messages are complete once the stream has been quiet this long
DRAIN_DEADLINE_S = 30.0

SERVE_ENV = {
    "PYTHONHASHSEED": "0",
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_SERVER_DEV_MODE": "1",  # for POST /reset_prefix_cache; the server listens on loopback only
}
KV_EVENTS_CONFIG = {
    "enable_kv_cache_events": True,
    "publisher": "zmq",
    "endpoint": f"tcp://*:{EVENTS_PORT}",
    "topic": "kv@hybrid",
}
SERVE_ARGS = [
    "--served-model-name", SERVED_NAME,
    "--host", "127.0.0.1",
    "--port", str(HTTP_PORT),
    "--block-size", str(BLOCK_SIZE),
    "--max-num-seqs", "8",
    "--enable-prefix-caching",
    "--prefix-caching-hash-algo", "sha256_cbor",
    "--kv-events-config", json.dumps(KV_EVENTS_CONFIG, separators=(",", ":")),
]  # fmt: skip

Prompt = list[int] | None  # None: the POST /reset_prefix_cache step


class CaptureError(Exception):
    """A failure worth one line to the user (the server log has the rest)."""


# --- the model (runs under .live/venv's Python, which has torch and transformers) --------------------------


def build_model(out: Path) -> None:
    """A bf16 GptOssForCausalLM with random weights and the tokenizer of scripts/build-tiny-model.py.

    Built without a quantization_config, so vLLM's CPU build serves it unquantized (no MXFP4 weights needed).
    """
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    spec = importlib.util.spec_from_file_location(
        "build_tiny_model", ROOT / "scripts" / "build-tiny-model.py"
    )
    assert spec is not None
    assert spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)

    out.mkdir(parents=True, exist_ok=True)
    vocab_size = tiny.build_tokenizer(ROOT, out)
    vocab = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    bos, eos = vocab["<s>"], vocab["<|end|>"]
    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2,
        max_position_embeddings=4096,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=2,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    GptOssForCausalLM(config).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=2).save_pretrained(out)


def ensure_model(out: Path, rebuild: bool) -> dict[str, Any]:
    """Build the model with the live venv's Python unless a complete gpt-oss build exists; return config."""
    config_path = out / "config.json"
    complete = all((out / name).is_file() for name in MODEL_FILES)
    if rebuild or not complete or json.loads(config_path.read_text()).get("model_type") != "gpt_oss":
        log(f"building the tiny gpt-oss model into {out}")
        cmd = [str(LIVE_VENV / "bin" / "python"), __file__, "--build-model", str(out)]
        subprocess.run(cmd, check=True, timeout=600)
    else:
        log(f"reusing the model in {out}")
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    return config


# --- the server ------------------------------------------------------------------------------------------


def ensure_ports_free() -> None:
    """A server left over on our ports would answer in place of ours."""
    for port in (HTTP_PORT, EVENTS_PORT):
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise CaptureError(f"port {port} is in use: stop whatever listens there first")


@contextlib.contextmanager
def vllm_server(model: Path, extra_args: list[str], log_path: Path) -> Iterator[None]:
    """`vllm serve` in its own process group, healthy within START_TIMEOUT_S, killed on every exit path."""
    ensure_ports_free()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "--kill-after=30", str(SERVER_LIFETIME_S), str(LIVE_VENV / "bin" / "vllm"), "serve"]
    cmd += [str(model), *SERVE_ARGS, *extra_args]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **SERVE_ENV},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(proc, log_path)
        yield
    finally:
        stop_group(proc)


def wait_healthy(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll /health; fail early if the server exits, and after START_TIMEOUT_S if it never answers."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise CaptureError(f"vllm serve exited with {proc.returncode} during start-up, see {log_path}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{BASE_URL}/health", timeout=5).status_code == 200:
                log(f"server up after {time.monotonic() - started:.0f} s (log {log_path})")
                return
        time.sleep(2)
    raise CaptureError(f"vllm serve not healthy after {START_TIMEOUT_S:.0f} s, see {log_path}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after STOP_TIMEOUT_S."""
    for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        ends = time.monotonic() + grace
        while time.monotonic() < ends:
            proc.poll()  # reap the leader, or the group never looks empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


# --- what a step records ---------------------------------------------------------------------------------


class EventStream:
    """A ZMQ SUB on the KV-event endpoint, connected before the server binds so no message is missed."""

    def __init__(self) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(f"tcp://127.0.0.1:{EVENTS_PORT}")

    def drain(self) -> list[dict[str, Any]]:
        """Every message until the stream has been quiet for QUIET_S (at most DRAIN_DEADLINE_S)."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        quiet_until = time.monotonic() + QUIET_S
        while (now := time.monotonic()) < min(quiet_until, deadline):
            if self._socket.poll(int(1000 * (min(quiet_until, deadline) - now)) + 1):
                _topic, seq, payload = self._socket.recv_multipart()
                messages.append(
                    {
                        "seq": int.from_bytes(seq, "big", signed=True),
                        "payload": msgspec.msgpack.decode(payload),
                    }
                )
                quiet_until = time.monotonic() + QUIET_S
        return messages

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


def metric_lines(client: httpx.Client, name: str) -> list[str]:
    """The /metrics sample lines of one metric family member (any labels)."""
    text = client.get("/metrics").raise_for_status().text
    return [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]


def counter(client: httpx.Client, name: str) -> int:
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in metric_lines(client, name)))


def cache_config_info(client: httpx.Client) -> dict[str, str]:
    """The label values of vllm:cache_config_info (how vLLM sized and configured the KV cache)."""
    lines = metric_lines(client, "vllm:cache_config_info")
    if not lines:
        raise CaptureError("vllm:cache_config_info missing from /metrics")
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', lines[0]))


def run_step(client: httpx.Client, events: EventStream, label: str, prompt: Prompt) -> dict[str, Any]:
    """Send one prompt (max_tokens 1, greedy) or the reset; record the counters and the messages after it."""
    queries = counter(client, "vllm:prefix_cache_queries_total")
    hits = counter(client, "vllm:prefix_cache_hits_total")
    if prompt is None:
        response = client.post("/reset_prefix_cache")
    else:
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0}
        response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    messages = events.drain()
    return {
        "label": label,
        "prompt_token_ids": prompt,
        "http_status": response.status_code,
        "prefix_cache_queries": counter(client, "vllm:prefix_cache_queries_total") - queries,
        "prefix_cache_hits": counter(client, "vllm:prefix_cache_hits_total") - hits,
        "messages": messages,
    }


# --- the two runs ----------------------------------------------------------------------------------------


def random_tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(*TOKEN_IDS) for _ in range(n)]


def junction_steps() -> list[tuple[str, Prompt]]:
    """Prompts that leave a first prompt P at 4W, 3W and 5W+16 tokens: where the sliding group pins blocks."""
    rng = random.Random(1)
    p = random_tokens(rng, 6 * WINDOW)

    def share(n: int) -> list[int]:
        return p[:n] + random_tokens(rng, 6 * WINDOW - n)

    return [
        ("fresh_6W", p),
        ("repeat", p),
        ("share_4W_first", share(4 * WINDOW)),
        ("share_4W_second", share(4 * WINDOW)),
        ("share_4W_third", share(4 * WINDOW)),
        ("share_3W_first", share(3 * WINDOW)),
        ("share_3W_second", share(3 * WINDOW)),
        ("share_5W_plus_16", share(5 * WINDOW + 16)),
        ("repeat_again", p),
        ("reset_prefix_cache", None),  # its AllBlocksCleared comes with the next step's messages
        ("fresh_40_after_reset", random_tokens(rng, 40)),
    ]


def eviction_steps() -> list[tuple[str, Prompt]]:
    """Ten distinct 6W prompts into a 64-block pool, then prompts 9..4 again (newest first, so a re-sent
    prompt's own blocks are not evicted by the one before it)."""
    rng = random.Random(11)
    prompts = [random_tokens(rng, 6 * WINDOW) for _ in range(10)]
    steps: list[tuple[str, Prompt]] = [(f"fill_{i}", p) for i, p in enumerate(prompts)]
    return steps + [(f"resend_{i}", prompts[i]) for i in range(9, 3, -1)]


@dataclass(frozen=True)
class RunSpec:
    name: str
    extra_args: list[str]
    steps: list[tuple[str, Prompt]]


RUNS = [
    RunSpec("junctions", ["--max-model-len", "2048"], junction_steps()),
    # 64 blocks only admit --max-model-len up to 992; 512 keeps several 384-token prompts in the pool
    RunSpec("eviction", ["--num-gpu-blocks-override", "64", "--max-model-len", "512"], eviction_steps()),
]


def capture_run(spec: RunSpec, model: Path) -> tuple[dict[str, Any], str]:
    """Start a server, play the run's steps, stop it; return the run's record and the vLLM version."""
    log(f"run {spec.name}: starting vllm serve {' '.join(spec.extra_args)}")
    events = EventStream()
    try:
        with (
            vllm_server(model, spec.extra_args, LOG_DIR / f"capture-hybrid-kv-{spec.name}.log"),
            httpx.Client(base_url=BASE_URL, timeout=120) as client,
        ):
            version = client.get("/version").raise_for_status().json()["version"]
            info = cache_config_info(client)
            before_steps = events.drain()
            steps = []
            for label, prompt in spec.steps:
                step = run_step(client, events, label, prompt)
                log(f"  {label}: hits {step['prefix_cache_hits']}, {len(step['messages'])} message(s)")
                steps.append(step)
    finally:
        events.close()
    record = {
        "name": spec.name,
        "num_gpu_blocks": int(info["num_gpu_blocks"]),
        "cache_config_info": {
            "num_gpu_blocks": int(info["num_gpu_blocks"]),
            "block_size": int(info["block_size"]),
            "prefix_cache_retention_interval": int(info["prefix_cache_retention_interval"]),
            "prefix_caching_hash_algo": info["prefix_caching_hash_algo"],
        },
        "serve_args": ["serve", str(model.relative_to(ROOT)), *SERVE_ARGS, *spec.extra_args],
        "messages_before_steps": before_steps,
        "steps": steps,
    }
    check_sequence(record)
    return record, version


def check_sequence(run: dict[str, Any]) -> None:
    """The publisher numbers messages from 0; a gap means the capture lost one and is not golden."""
    seqs = [m["seq"] for m in run["messages_before_steps"]]
    seqs += [m["seq"] for step in run["steps"] for m in step["messages"]]
    if seqs != list(range(len(seqs))):
        raise CaptureError(f"run {run['name']}: message seq numbers are not 0..{len(seqs) - 1}: {seqs}")


# --- the fixture -----------------------------------------------------------------------------------------


def about(version: str, model: dict[str, Any]) -> str:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    env = " ".join(f"{k}={v}" for k, v in SERVE_ENV.items())
    return (
        f"KV events captured from a real vLLM {version} (vllm-cpu build, make test-live's .live/venv) "
        f"on {today} by scripts/capture-hybrid-kv.py. Model: a random-weight bf16 GptOssForCausalLM with "
        f"{model['num_hidden_layers']} layers, layer_types {model['layer_types']}, sliding_window "
        f"{model['sliding_window']}, hidden {model['hidden_size']}, {model['num_attention_heads']} query and "
        f"{model['num_key_value_heads']} KV heads (head_dim {model['head_dim']}), "
        f"{model['num_local_experts']} experts (top {model['num_experts_per_tok']}), vocab "
        f"{model['vocab_size']}. vLLM made two KV-cache groups of block size {BLOCK_SIZE}: group 0 "
        f"sliding_window({WINDOW}), group 1 full_attention. Served with `vllm serve` and the flags in each "
        f"run's serve_args, environment {env}; block hashes are sha256_cbor with PYTHONHASHSEED=0 (stable "
        "across reruns; the payload timestamps are not). Each step sent prompt_token_ids to /v1/completions "
        "(max_tokens 1, temperature 0), or POSTed /reset_prefix_cache, and recorded the deltas of "
        "vllm:prefix_cache_queries_total and vllm:prefix_cache_hits_total and every ZMQ message after it "
        f"until the stream was quiet for {QUIET_S:g} s: seq and the msgpack payload [ts, [events], dp_rank] "
        "as msgspec decoded it."
    )


def write_fixture(path: Path, runs: list[dict[str, Any]], version: str, model: dict[str, Any]) -> None:
    fixture = {
        "about": about(version, model),
        "vllm_version": version,
        "block_size": BLOCK_SIZE,
        "sliding_window": WINDOW,
        "serve_env": SERVE_ENV,
        "runs": runs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
    log(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def log(message: str) -> None:
    print(f"[capture-hybrid-kv] {message}", flush=True)


def raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the `finally` that stops the server runs."""
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURE, help=f"fixture to write (default {FIXTURE})")
    parser.add_argument("--rebuild-model", action="store_true", help=f"rebuild {MODEL_DIR} even if complete")
    parser.add_argument("--build-model", type=Path, help=argparse.SUPPRESS)  # internal: under .live/venv
    args = parser.parse_args(argv)
    if args.build_model:
        build_model(args.build_model)
        return 0
    if not (LIVE_VENV / "bin" / "vllm").is_file():
        print(
            f"{LIVE_VENV}/bin/vllm missing: run `make test-live` (scripts/test-live.sh) once first",
            file=sys.stderr,
        )
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_on_signal)
    try:
        model = ensure_model(MODEL_DIR, args.rebuild_model)
        captured = [capture_run(spec, MODEL_DIR) for spec in RUNS]
    except (CaptureError, subprocess.CalledProcessError) as error:
        print(f"capture-hybrid-kv: {error}", file=sys.stderr)
        return 1
    write_fixture(args.out, [run for run, _ in captured], captured[0][1], model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
