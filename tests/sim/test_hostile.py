"""Hostile clients against the simulator: reproductions from the hardening probe. Answers must be vLLM's
error shape with the right status, memory must stay bounded, and big prompts must not stall the loop."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest

from eksinfer.tokenize import BuiltinTokenizer
from tests.gateway.hostile import (
    assert_openai_error,
    closed_by_server,
    parse_answer,
    post,
    raw_request,
    trickle,
)
from tests.sim.conftest import StartCluster
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


async def test_json_nesting_bomb_is_a_400(start: StartCluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster = await start()
    bomb = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = await raw_request(cluster.ports[0], post("/v1/completions", bomb))
    error = assert_openai_error(answer, 400)
    assert error["code"] == 400
    assert error["type"] == "Bad Request"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_body_over_the_limit_is_a_413_in_vllms_shape(start: StartCluster) -> None:
    cluster = await start(max_request_body_bytes=64 * 1024)
    big = b'{"prompt": "' + b"a" * 100_000 + b'", "max_tokens": 1}'
    answer = await raw_request(cluster.ports[0], post("/v1/completions", big))
    error = assert_openai_error(answer, 413)
    assert error["code"] == 413
    assert "65536 bytes" in error["message"]
    async with httpx.AsyncClient(timeout=10) as client:  # and it keeps serving
        ok = await client.post(cluster.urls[0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "extra",
    [[b"x-big: " + b"a" * 9 * 1024], [f"x-h{i}: v".encode() for i in range(200)], [b"not a header"]],
    ids=["9 KB header", "200 headers", "no colon"],
)
async def test_malformed_headers_get_json_and_one_warning(
    start: StartCluster, caplog: pytest.LogCaptureFixture, extra: list[bytes]
) -> None:
    cluster = await start()
    caplog.set_level(logging.INFO)
    answer = await raw_request(cluster.ports[0], post("/v1/completions", b'{"prompt": "hi"}', *extra))
    assert assert_openai_error(answer, 400)["code"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].exc_info is None


async def test_large_prompts_are_tokenized_off_the_event_loop(
    start: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await start()
    tokenizer = cluster.engines[0].tokenizer
    threads: list[bool] = []  # True when encoding ran on the loop's thread
    loop_thread = threading.get_ident()
    original = tokenizer.encode_prompt

    def recording(prompt: str) -> list[int]:
        threads.append(threading.get_ident() == loop_thread)
        return original(prompt)

    monkeypatch.setattr(tokenizer, "encode_prompt", recording)
    async with httpx.AsyncClient(timeout=30) as client:
        small = {"prompt": "hello there", "max_tokens": 1}
        large = {"prompt": "word " * 40_000, "max_tokens": 1}  # 200 KB
        for body in (small, large):
            r = await client.post(cluster.urls[0] + "/v1/completions", json=body)
            assert r.status_code in (200, 400), r.text  # 400: longer than max_model_len, still tokenized
    assert threads == [True, False]


async def test_health_answers_while_a_large_prompt_is_tokenized(
    start: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of answers, not their timing: tokenizing a 200 KB prompt is held until /health has answered;
    on the loop's thread that hold would block /health, and the hold gives up after 20 s (the test fails)."""
    cluster = await start()
    url = cluster.urls[0]
    tokenizer = cluster.engines[0].tokenizer
    started, release = threading.Event(), threading.Event()
    original = tokenizer.encode_prompt

    def held(prompt: str) -> list[int]:
        if len(prompt) > 100_000:
            started.set()
            release.wait(20)
        return original(prompt)

    monkeypatch.setattr(tokenizer, "encode_prompt", held)
    order: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def big() -> None:
            body = {"prompt": "word " * 40_000, "max_tokens": 1}
            r = await client.post(url + "/v1/completions", json=body)
            order.append(f"big {r.status_code in (200, 400)}")

        async def health() -> None:
            await asyncio.to_thread(started.wait, 20)
            r = await client.get(url + "/health")
            order.append(f"health {r.status_code}")
            release.set()

        await asyncio.gather(big(), health())
    assert order == ["health 200", "big True"]


def test_message_cache_is_bounded_in_bytes() -> None:
    """Distinct large chats used to stay cached whole, 4,096 of them whatever their size (forty 400 KB chats
    grew the gateway in builtin mode by 70 MB). Scaled down: forty 20 KB chats against a 1 MiB budget."""
    budget = 1024**2
    tok = BuiltinTokenizer(message_cache_bytes=budget)
    tail = tok.encode("<|assistant|>\n", add_special_tokens=False)
    for i in range(40):
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{i} " * 10_000}]
        assert tok.encode_chat(messages)[-len(tail) :] == tail
        assert tok._messages.bytes <= budget
    assert 1 < len(tok._messages) < 40  # large messages were cached, then evicted
    assert ("system", "be brief") in tok._messages._entries  # the repeated one stays (least recently used)


HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def test_slow_headers_and_bodies_are_cut_off(start: StartCluster) -> None:
    cluster = await start(keep_alive_timeout_s=0.3, body_timeout_s=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.ports[0])
    writer.write(HEAD)
    sender = asyncio.create_task(trickle(writer, b"x-slow: 1\r\n"))
    assert await closed_by_server(reader) == b""
    sender.cancel()
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.ports[0])
    writer.write(HEAD + b'Content-Length: 500\r\n\r\n{"prompt": ')
    sender = asyncio.create_task(trickle(writer, b" "))
    answer = parse_answer(await closed_by_server(reader))
    assert answer.status == 408
    assert answer.json()["error"]["code"] == 408
    sender.cancel()
    writer.close()


async def test_connections_past_the_limit_get_503(start: StartCluster) -> None:
    cluster = await start(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", cluster.ports[0]) for _ in range(2)]
    for _, writer in held:
        writer.write(HEAD)
    runner = cluster.replicas[0].runner
    await until(lambda: runner.guarded is not None and runner.guarded.open_connections == 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.ports[0])
    answer = parse_answer(await closed_by_server(reader))
    writer.close()
    assert answer.status == 503
    assert answer.json()["error"]["type"] == "Service Unavailable"
    for _, w in held:
        w.close()


@pytest.mark.parametrize("messages", [[None], [1, {"role": "user", "content": "hi"}], ["hi"]])
async def test_tokenize_with_messages_that_are_not_objects_is_a_400(
    start: StartCluster, messages: list[object]
) -> None:
    """Found by the fuzz tier: /tokenize answered 500 with a traceback."""
    cluster = await start()
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/tokenize", "/v1/chat/completions"):
            r = await client.post(cluster.urls[0] + path, json={"messages": messages})
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["param"] == "messages"


def test_kv_event_replay_buffer_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch storing a long prompt carries its token ids: 10,000 kept batches of 28k-token prompts were a
    GB in the simulator (the soak in `make bench` showed it growing). Unstarted publisher: no sockets."""
    from eksinfer.kvcache.events import BlockStored, KVEventsConfig
    from eksinfer.sim import publisher

    monkeypatch.setattr(publisher, "REPLAY_BUFFER_BYTES", 200_000)
    pub = publisher.EventPublisher(KVEventsConfig(enable_kv_cache_events=True), rank=0, topic="t")
    ids = tuple(range(1000, 1000 + 16 * 1000))
    for i in range(50):
        event = BlockStored(tuple(range(i * 1000, i * 1000 + 1000)), None, ids, 16)
        pub.publish([event])
    kept = list(pub._buffer)
    assert sum(len(payload) for _, payload in kept) <= 200_000
    assert pub._buffer_bytes == sum(len(payload) for _, payload in kept)
    assert [seq for seq, _ in kept] == list(range(50 - len(kept), 50))  # the newest, in order
    assert len(kept) >= 2
