"""`eksinfer up` as a user runs it: a subprocess that starts the simulator, serves, and stops on Ctrl-C."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.stack import REPLAY_OFFSET, StackOptions, gateway_config, sim_command
from tests.waiting import until_sync

pytestmark = pytest.mark.timeout(90)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(count: int, extra_offset: int = 0) -> int:
    """A base port with `count` consecutive free ports (and the same block `extra_offset` higher)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - REPLAY_OFFSET - count)
        ports = [base + i for i in range(count)]
        if extra_offset:
            ports += [p + extra_offset for p in ports]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port block")


def stored_blocks(port: int) -> float:
    """KV blocks the gateway's index learnt from engine BlockStored events (its /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "eksinfer_gateway_router_index_stored_blocks_total":
                return sample.value
    return 0.0


def test_sim_command_and_gateway_config() -> None:
    opts = StackOptions(replicas=2, sim_port=9100, kv_events_port=6000, time_scale=0, model="llama-3.1-8b")
    cmd = sim_command(opts)
    assert cmd[1:6] == ["-m", "eksinfer.cli.main", "sim", "--replicas", "2"]
    assert cmd[cmd.index("--port") + 1] == "9100"
    assert cmd[cmd.index("--time-scale") + 1] == "0"
    assert '"replay_endpoint": "tcp://*:6100"' in cmd[cmd.index("--kv-events-config") + 1]
    config = gateway_config(opts)
    assert [(e.url, e.kv_events) for e in config.endpoints.static] == [
        ("http://127.0.0.1:9100", "tcp://127.0.0.1:6000"),
        ("http://127.0.0.1:9101", "tcp://127.0.0.1:6001"),
    ]
    assert config.routing["preset"] == "kv-aware"


@pytest.mark.slow
def test_up_serves_routes_by_prefix_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_block(1)
    sim_port = free_block(2)
    kv_port = free_block(2, REPLAY_OFFSET)
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "up", "--replicas", "2", "--time-scale", "0"]
    cmd += ["--port", str(port), "--sim-port", str(sim_port), "--kv-events-port", str(kv_port)]
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}
        )
    try:

        def banner_or_exit() -> bool:
            assert proc.poll() is None, out.read_text()
            return "Ctrl-C stops" in out.read_text()

        until_sync(banner_or_exit, timeout_s=60, what="eksinfer up printed its banner")
        banner = out.read_text()
        assert f"http://localhost:{port}" in banner
        assert f"curl http://localhost:{port}/v1/chat/completions" in banner
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        system = "You are a careful assistant that answers briefly. " * 20
        chosen = []
        for i in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {i}"},
                ],
                max_tokens=4,
            )
            answer = raw.parse()
            assert answer.choices[0].message.content
            chosen.append(raw.headers["x-eksinfer-endpoint"])
            if i == 0:  # the engine's KV events for the shared prompt reach the gateway's index
                assert answer.usage is not None
                full_blocks = answer.usage.prompt_tokens // 16
                until_sync(
                    lambda n=full_blocks: stored_blocks(port) >= n, what="gateway indexed the first prompt"
                )
        route = raw.headers["x-eksinfer-route"]
        assert len(set(chosen)) == 1, chosen  # the shared system prompt keeps them on one engine
        assert "reason=prefix-hit" in route
        stream = client.completions.create(model=model, prompt="count", max_tokens=5, stream=True)
        assert len([c for c in stream if c.choices and c.choices[0].text]) == 5  # one chunk per token
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'eksinfer_gateway_decisions_total{preset="kv-aware",reason="prefix-hit"}' in metrics
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert out.read_text().rstrip().endswith("stopped")
        for p in (sim_port, sim_port + 1, kv_port):
            assert _free(p), f"port {p} still held after Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_up_keeps_stored_responses_on_their_engine(tmp_path: Path) -> None:
    """`VLLM_ENABLE_RESPONSES_API_STORE=1 eksinfer up --replicas 3 --preset round-robin`: the engines keep
    stored responses (each its own store, as vLLM), round-robin spreads requests over them, and every
    follow-up and GET still reaches the engine that stored its response (the gateway pins them)."""
    port = free_block(1)
    sim_port = free_block(3)
    kv_port = free_block(3, REPLAY_OFFSET)
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "up", "--replicas", "3", "--time-scale", "0"]
    cmd += ["--port", str(port), "--sim-port", str(sim_port), "--kv-events-port", str(kv_port)]
    cmd += ["--preset", "round-robin"]
    env = {**os.environ, "NO_COLOR": "1", "VLLM_ENABLE_RESPONSES_API_STORE": "1"}
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:

        def banner_or_exit() -> bool:
            assert proc.poll() is None, out.read_text()
            return "Ctrl-C stops" in out.read_text()

        until_sync(banner_or_exit, timeout_s=60, what="eksinfer up printed its banner")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        starts = [
            client.responses.with_raw_response.create(model=model, input=f"topic {i}", max_output_tokens=4)
            for i in range(3)
        ]
        assert len({raw.headers["x-eksinfer-endpoint"] for raw in starts}) == 3
        last = [raw.parse().id for raw in starts]
        for _ in range(3):
            for i in range(3):
                answer = client.responses.create(
                    model=model, input="and then?", previous_response_id=last[i], max_output_tokens=4
                )
                assert answer.previous_response_id == last[i]
                last[i] = answer.id
        assert [client.responses.retrieve(rid).id for rid in last] == last
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
