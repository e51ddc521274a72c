"""`eksinfer gateway` (preset kv-aware) in front of two real vLLM 0.32 servers.

What it shows: a prefix cached on one server (by a request sent straight to it) is seen by the gateway through
that server's ZMQ KV events, so later requests sharing the prefix are routed there; the server's own
`vllm:prefix_cache_hits_total` rises by exactly the hand-computed cached tokens, and the other server's does
not move. The gateway tokenizes with the tiny model's HF tokenizer, and again with the engines' own
`/tokenize` (mode `engine`, what the rendered manifests configure); its prompt size and predicted cached
tokens (the x-eksinfer-route header) must equal the engine's /tokenize and the engine's hit counter.
Run twice, with the roles swapped, so "always the first server" cannot pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from eksinfer.kvcache.events import AllBlocksCleared, decode_batch, decode_frames
from tests.live.conftest import LiveServer
from tests.live.helpers import ZmqCapture, cache_hit_tokens, free_port, long_text, metric_sum

pytestmark = pytest.mark.live

BLOCK_SIZE = 32
HITS = "vllm:prefix_cache_hits_total"
ROUTE_RE = re.compile(
    r"endpoint=(\S+) preset=(\S+) reason=(\S+) prompt_tokens=(\d+) predicted_cached_tokens=(\d+)"
)


@contextmanager
def _gateway(servers: list[LiveServer], model: Path, workdir: Path, tokenizer: str) -> Iterator[str]:
    """`eksinfer gateway` (kv-aware; `tokenizer` "hf": the tiny model's files, "engine": the servers'
    /tokenize) as a process, until it is ready."""
    port = free_port()
    events_port = int(servers[0].events.rsplit(":", 1)[1])
    replay_port = int(servers[0].replay.rsplit(":", 1)[1])
    config = {
        "server": {"host": "127.0.0.1", "port": port, "route_headers": True},
        "endpoints": {"static": [{"url": s.url, "kv_events": s.events} for s in servers]},
        "scrape": {"interval_s": 0.2},
        "routing": {
            "preset": "kv-aware",
            "block_size": BLOCK_SIZE,
            "tokenizer": {"mode": "hf", "path": str(model)} if tokenizer == "hf" else {"mode": "engine"},
            "events": {"replay_port_offset": replay_port - events_port},
        },
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / "gateway.log"
    with log_path.open("w") as log:
        cmd = [sys.executable, "-m", "eksinfer.cli.main", "gateway", "--config", str(path)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ready = httpx.get(url + "/ready", timeout=2).json()
                    if ready.get("healthy") == len(servers) and "tiny-llama" in ready.get("models", []):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "gateway not ready in 30 s"
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=15)


@pytest.fixture(scope="module", params=["hf", "engine"], ids=["tokenizer-hf", "tokenizer-engine"])
def gateway(
    live_servers: list[LiveServer],
    live_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp(f"gateway-{request.param}")
    with _gateway(live_servers, live_model, workdir, request.param) as url:
        yield url


def _wait_index(gateway_url: str, at_least: float, timeout_s: float = 15.0) -> float:
    """The gateway's index size once it holds `at_least` blocks (the KV events have arrived)."""
    deadline = time.monotonic() + timeout_s
    size = 0.0
    while time.monotonic() < deadline:
        size = metric_sum(gateway_url, "eksinfer_gateway_router_index_blocks")
        if size >= at_least:
            return size
        time.sleep(0.1)
    raise AssertionError(f"gateway index has {size} blocks after {timeout_s} s, expected >= {at_least}")


def _body(api: str, prefix: str, question: str) -> dict[str, Any]:
    """A request whose prompt starts with `prefix`: a completion prompt, or a chat's system message."""
    if api == "chat":
        messages = [{"role": "system", "content": prefix}, {"role": "user", "content": question}]
        return {"model": "tiny-llama", "messages": messages}
    return {"model": "tiny-llama", "prompt": f"{prefix} {question}"}


def _send(url: str, api: str, body: dict[str, Any]) -> httpx.Response:
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    r = httpx.post(url + path, json={**body, "max_tokens": 1, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def _engine_tokens(url: str, body: dict[str, Any]) -> list[int]:
    """The engine's own token ids for a request (chat: its template with the generation prompt)."""
    r = httpx.post(url + "/tokenize", json=body, timeout=30)
    r.raise_for_status()
    return list(r.json()["tokens"])


def _route(r: httpx.Response) -> tuple[str, str, str, int, int]:
    route = r.headers["x-eksinfer-route"]
    m = ROUTE_RE.match(route)
    assert m is not None, route
    endpoint, preset, reason, prompt_tokens, predicted = m.groups()
    assert r.headers["x-eksinfer-endpoint"] == endpoint
    return endpoint, preset, reason, int(prompt_tokens), int(predicted)


def _warm(gateway_url: str, server: LiveServer, api: str, prefix: str) -> tuple[list[int], float]:
    """Cache `prefix` on `server` only, bypassing the gateway; wait until its events reach the index."""
    body = _body(api, prefix, "Hello.")
    tokens = _engine_tokens(server.url, body)
    index_before = metric_sum(gateway_url, "eksinfer_gateway_router_index_blocks")
    t0 = time.monotonic()
    _send(server.url, api, body)
    _wait_index(gateway_url, index_before + len(tokens) // BLOCK_SIZE)
    return tokens, time.monotonic() - t0


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("home", [0, 1], ids=["prefix-on-server0", "prefix-on-server1"])
def test_shared_prefix_follows_the_kv_events(
    gateway: str, live_servers: list[LiveServer], home: int, api: str
) -> None:
    target, other = live_servers[home], live_servers[1 - home]
    prefix = long_text(f"gw-{api}-{home}-{uuid.uuid4().hex[:8]}", 400)
    warm_tokens, event_wait_s = _warm(gateway, target, api, prefix)
    assert len(warm_tokens) >= 10 * BLOCK_SIZE, len(warm_tokens)
    cached_on_target = [warm_tokens]
    hits_before = (metric_sum(target.url, HITS), metric_sum(other.url, HITS))

    # Requests sharing the prefix through the gateway: each must go to `target`, predicted as really hit.
    expected_hits = 0
    lines = []
    for k in range(3):
        body = _body(api, prefix, f"Question {k}: {long_text(f'q{k}-{uuid.uuid4().hex[:6]}', 12)}")
        tokens = _engine_tokens(target.url, body)
        r = _send(gateway, api, body)
        lines.append(r.headers["x-eksinfer-route"].split(";")[0])
        endpoint, preset, reason, prompt_tokens, predicted = _route(r)
        assert (endpoint, preset, reason) == (target.endpoint_id, "kv-aware", "prefix-hit"), lines[-1]
        assert prompt_tokens == len(tokens)  # the gateway tokenizes (and templates) as the engine does
        assert r.json()["usage"]["prompt_tokens"] == len(tokens)
        hit = cache_hit_tokens(tokens, cached_on_target, BLOCK_SIZE)
        assert predicted == hit, lines[-1]
        expected_hits += hit
        cached_on_target.append(tokens)
    hits_after = (metric_sum(target.url, HITS), metric_sum(other.url, HITS))
    print(
        f"\n[{api}] prefix cached on {target.endpoint_id} ({len(warm_tokens)} tokens); in the gateway index "
        f"{event_wait_s:.2f} s after the request was sent\n  " + "\n  ".join(lines) + f"\n  {HITS}: "
        f"{target.endpoint_id} {hits_before[0]:.0f} -> {hits_after[0]:.0f}, {other.endpoint_id} "
        f"{hits_before[1]:.0f} -> {hits_after[1]:.0f} (expected +{expected_hits} on {target.endpoint_id})"
    )
    assert hits_after[0] - hits_before[0] == expected_hits
    assert hits_after[1] == hits_before[1]
    assert expected_hits >= 3 * 10 * BLOCK_SIZE


def test_prefix_cache_reset_reaches_the_gateway(gateway: str, live_servers: list[LiveServer]) -> None:
    """vLLM's POST /reset_prefix_cache (dev mode) publishes AllBlocksCleared; once it arrives the gateway
    stops predicting hits there, and indeed the engine reports none.

    vLLM 0.32 publishes KV events from `Scheduler.update_from_output`, i.e. after an engine step: a reset on
    an idle engine is published only with the next request's batch. So a small unrelated request is sent
    straight to the engine after the reset (the "nudge"), and the gateway is asked only after that.
    """
    target = live_servers[0]
    prefix = long_text(f"reset-{uuid.uuid4().hex[:8]}", 300)
    _warm(gateway, target, "completions", prefix)
    cleared_before = _index_stat(gateway, "clears")
    capture = ZmqCapture(target.events)
    try:
        r = httpx.post(target.url + "/reset_prefix_cache", timeout=30)
        assert r.status_code == 200, r.text
        before_nudge = len(capture.wait_for(1, timeout_s=1.0))
        _send(target.url, "completions", _body("completions", "Nudge.", "x"))
        frames = capture.wait_for(before_nudge + 1)
    finally:
        frames = capture.close()
    events = [e for p in frames for e in decode_batch(decode_frames(p)[2]).events]
    assert any(isinstance(e, AllBlocksCleared) for e in events), events
    deadline = time.monotonic() + 10
    while _index_stat(gateway, "clears") <= cleared_before:
        assert time.monotonic() < deadline, "the gateway never applied AllBlocksCleared"
        time.sleep(0.1)
    hits_before = [metric_sum(s.url, HITS) for s in live_servers]
    r = _send(gateway, "completions", _body("completions", prefix, "After the reset."))
    _, _, reason, _, predicted = _route(r)
    hits_after = [metric_sum(s.url, HITS) for s in live_servers]
    print(
        f"\nreset: {before_nudge} batch(es) published before the nudge request, AllBlocksCleared after it;"
        f"\n  next request: {r.headers['x-eksinfer-route'].split(';')[0]}; hits {hits_before} -> {hits_after}"
    )
    assert predicted == 0
    assert reason != "prefix-hit"
    assert hits_after == hits_before


def _index_stat(gateway_url: str, key: str) -> float:
    """One of the index's counters (`router_metrics.INDEX` names them)."""
    return metric_sum(gateway_url, f"eksinfer_gateway_router_index_{key}_total")


def test_late_gateway_recovers_earlier_events_through_vllm_replay(
    live_servers: list[LiveServer], live_model: Path, tmp_path: Path
) -> None:
    """A gateway that starts after the engine published a prefix fetches it from vLLM's replay socket
    (ROUTER, `replay_endpoint`): its subscriber probes the replay socket on connect, and again when a
    live batch with seq > 0 reveals the gap, asking for everything from 0."""
    target = live_servers[1]
    prefix = long_text(f"replay-{uuid.uuid4().hex[:8]}", 400)
    early = _body("completions", prefix, "Published before the gateway started.")
    _send(target.url, "completions", early)  # published with nobody of ours subscribed
    with _gateway(live_servers, live_model, tmp_path, "hf") as url:
        # The probe on connect, or any new batch on `target` (it reveals the gap), triggers a replay. Nudges
        # (full blocks of an unrelated text, so that vLLM publishes a batch) repeat until batches came back.
        deadline = time.monotonic() + 15
        ep = f'{{endpoint="{target.endpoint_id}"}}'
        n = 0
        while metric_sum(url, "eksinfer_gateway_router_subscribers_replayed_batches_total" + ep) < 1:
            assert time.monotonic() < deadline, "no batch came back from vLLM's replay socket"
            nudge = long_text(f"nudge-{n}-{uuid.uuid4().hex[:8]}", 60)
            _send(target.url, "completions", _body("completions", nudge, "x"))
            n += 1
            time.sleep(0.5)
        time.sleep(0.5)  # the replay answer, or its failure
        body = _body("completions", prefix, "Routed by the replayed events.")
        r = _send(url, "completions", body)
        endpoint, _, reason, _, predicted = _route(r)
        stats = {
            k: metric_sum(url, f"eksinfer_gateway_router_subscribers_{k}_total{ep}")
            for k in ("replays", "replayed_batches", "lost_batches", "decode_errors")
        }
    print(f"\nlate gateway: subscriber {stats}\n  {r.headers['x-eksinfer-route'].split(';')[0]}")
    assert (endpoint, reason) == (target.endpoint_id, "prefix-hit")
    early_tokens = _engine_tokens(target.url, early)
    assert predicted == cache_hit_tokens(_engine_tokens(target.url, body), [early_tokens], BLOCK_SIZE)
    assert predicted >= 10 * BLOCK_SIZE
    assert stats["lost_batches"] == 0
    assert stats["decode_errors"] == 0


def test_stream_through_the_gateway_with_the_openai_sdk(gateway: str, live_servers: list[LiveServer]) -> None:
    """A real vLLM SSE stream relayed by the gateway parses with the official SDK, usage chunk included."""
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", timeout=60, max_retries=0)
    body = _body("chat", long_text(f"stream-{uuid.uuid4().hex[:8]}", 40), "Say something.")
    prompt_tokens = _engine_tokens(live_servers[0].url, body)
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=body["messages"],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompt_tokens), 8)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    print(f"\nstream via gateway: {len(chunks)} chunks, {len(text)} characters, usage {usage}")
