"""Runtime LoRA loading (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`): the load / unload routes against vLLM 0.32's
captured answers, the adapter in `/v1/models` and as a `model`, and in `vllm:lora_requests_info`.

The `openai` SDK has no method for the load routes (plain HTTP there); listing models and generating with
the adapter go through the SDK.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.sim.config import FaultOptions
from tests.sim.conftest import Sdk, StartCluster, set_slow_token_s
from tests.sim.test_vllm_shapes import shape
from tests.waiting import DEADLINE_S, until

REAL: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "vllm-0.32-leftovers.json").read_text())
GEN = REAL["generate"]
MODEL = "llama-3.1-8b"


def expected(case: str, adapter_dir: str) -> tuple[int, Any, str | None]:
    """A captured answer with the capture's names (model, adapter path) replaced by this test's."""
    want = GEN[case]
    text = json.dumps(want["body"]).replace("tiny-llama", MODEL).replace("/tmp/cap16/lora-a", adapter_dir)
    return want["status"], json.loads(text), want["content_type"]


async def replay(http: httpx.AsyncClient, url: str, case: str, adapter_dir: str) -> httpx.Response:
    req = GEN[case]["request"]
    text = json.dumps(req["body"]).replace("tiny-llama", MODEL).replace("/tmp/cap16/lora-a", adapter_dir)
    return await http.post(url + req["path"], json=json.loads(text))


async def test_load_and_unload_answer_as_vllm(start: StartCluster, client: Sdk, tmp_path: Path) -> None:
    adapter = str(tmp_path / "lora-a")
    (tmp_path / "lora-a").mkdir()
    cluster = await start(allow_runtime_lora_updating=True, enable_lora=True, max_loras=2)
    url = cluster.urls[0]
    sdk = client(url)
    cases = ["lora_load", "lora_load_again", "lora_load_inplace", "lora_load_base_name", "lora_load_empty",
             "lora_load_no_path"]  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as http:
        for case in cases:
            got = await replay(http, url, case, adapter)
            status, body, ctype = expected(case, adapter)
            assert got.status_code == status, case
            if ctype is None:  # vLLM's bare Response: text without a type (aiohttp: RFC 9110's default)
                assert got.text == body
                assert got.headers["Content-Type"] == "application/octet-stream"
            else:
                assert got.json() == body, case
        assert [m.id for m in (await sdk.models.list()).data] == [MODEL, "ad-a"]
        cards = (await http.get(url + "/v1/models")).json()["data"]
        _, want_models, _ = expected("models_after_load", adapter)
        assert shape(cards[1]) == shape(want_models["data"][1])
        assert (cards[1]["root"], cards[1]["parent"], cards[1]["max_model_len"]) == (adapter, MODEL, None)
        out = await sdk.completions.create(model="ad-a", prompt="Hello", max_tokens=4)
        assert out.model == "ad-a"
        for case in ["lora_unload", "lora_unload_again", "lora_unload_empty", "lora_unload_missing_field"]:
            got = await replay(http, url, case, adapter)
            status, body, ctype = expected(case, adapter)
            assert got.status_code == status, case
            assert (got.text if ctype is None else got.json()) == body, case
    assert [m.id for m in (await sdk.models.list()).data] == [MODEL]
    with pytest.raises(openai.NotFoundError) as err:
        await sdk.completions.create(model="ad-a", prompt="Hello", max_tokens=4)
    assert err.value.body == expected("lora_completion_after_unload", adapter)[1]["error"]


async def test_missing_local_path_is_vllms_404(start: StartCluster, tmp_path: Path) -> None:
    cluster = await start(allow_runtime_lora_updating=True, enable_lora=True)
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.post(
            cluster.urls[0] + "/v1/load_lora_adapter",
            json={"lora_name": "ad-x", "lora_path": str(tmp_path / "nowhere")},
        )
        hub = await http.post(  # not a local path: taken as a hub id (the simulator loads no weights)
            cluster.urls[0] + "/v1/load_lora_adapter", json={"lora_name": "ad-h", "lora_path": "org/adapter"}
        )
    assert got.status_code == 404
    assert got.json() == GEN["lora_load_missing_path"]["body"]  # the path hidden as vLLM hides it
    assert hub.status_code == 200


async def test_routes_exist_only_when_runtime_updating_is_allowed(start: StartCluster) -> None:
    cluster = await start(enable_lora=True)
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.post(
            cluster.urls[0] + "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "b"}
        )
    assert got.status_code == 404
    assert got.json() == {"detail": "Not Found"}


async def test_loaded_adapter_shows_in_lora_requests_info(start: StartCluster, tmp_path: Path) -> None:
    """What the gateway's lora-affinity scorer reads: the adapter of a running request, with --max-loras."""
    cluster = await start(
        allow_runtime_lora_updating=True, enable_lora=True, max_loras=2, faults=FaultOptions(slow_token_s=1.0)
    )
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=DEADLINE_S) as http:
        loaded = await http.post(
            url + "/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "org/sql"}
        )
        assert loaded.status_code == 200
        task = asyncio.create_task(
            http.post(
                url + "/v1/completions",
                json={"model": "sql", "prompt": "x", "max_tokens": 20, "ignore_eos": True},
            )
        )
        labels: dict[str, str] = {}

        async def adapter_running() -> bool:
            for fam in text_string_to_metric_families((await http.get(url + "/metrics")).text):
                if fam.name == "vllm:lora_requests_info":
                    labels.update(fam.samples[0].labels)
            return labels.get("running_lora_adapters") == "sql"

        await until(adapter_running, what="the loaded adapter running")
        set_slow_token_s(cluster, 0.0)
        assert (await task).status_code == 200
    assert labels == {"max_lora": "2", "running_lora_adapters": "sql", "waiting_lora_adapters": ""}
    real = [line for line in GEN["metrics_after_lora"]["body"].splitlines() if line.startswith("vllm:")]
    assert any('running_lora_adapters="ad-a"' in line and 'max_lora="2"' in line for line in real)
