"""`/score` and `/rerank` of a simulated pooling model, against vLLM 0.32's captured answers.

The `openai` SDK has no score or rerank method, so these use plain HTTP and compare with
tests/sim/data/vllm-0.32-leftovers.json (vLLM 0.32 CPU, tiny Llama, `--runner pooling --convert embed`):
statuses, key order, error texts and usage arithmetic must match; scores differ (other model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from eksinfer.sim.cluster import SimCluster
from tests.sim.conftest import Sdk, StartCluster
from tests.sim.test_vllm_shapes import shape

REAL: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "vllm-0.32-leftovers.json").read_text())
POOL = REAL["pooling"]
MODEL = "llama-3.1-8b"


async def ask(cluster: SimCluster, case: str) -> httpx.Response:
    """Replays a captured request (model renamed) against the simulator."""
    req = POOL[case]["request"]
    body = dict(req["body"])
    if body.get("model") == "tiny-llama":
        body["model"] = MODEL
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(cluster.urls[0] + req["path"], json=body)


@pytest.mark.parametrize(
    "case", ["score_score", "score_v1_score", "score_queries_documents", "score_data", "rerank_rerank",
             "rerank_v1_rerank", "rerank_v2_rerank", "rerank_top_n", "rerank_top_n_big", "rerank_no_model"],
)  # fmt: skip
async def test_answers_have_vllms_shape(start: StartCluster, case: str) -> None:
    cluster = await start(runner="pooling")
    got = await ask(cluster, case)
    want = POOL[case]
    assert got.status_code == want["status"] == 200
    body = got.json()
    assert shape(body) == shape(want["body"])
    assert body["id"].startswith("score-")
    if "results" in body:  # rerank: same documents picked, sorted by score, each with its own index
        assert len(body["results"]) == len(want["body"]["results"])
        scores = [r["relevance_score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)
        docs = want["request"]["body"]["documents"]
        assert all(docs[r["index"]] == r["document"]["text"] for r in body["results"])
    else:
        assert [d["index"] for d in body["data"]] == [d["index"] for d in want["body"]["data"]]


async def test_usage_counts_each_input_once_as_vllm(start: StartCluster) -> None:
    """vLLM's prompt_tokens = the query's tokens once + each document's (checked on the capture with the real
    tokenizer's counts); the simulator applies the same rule with its own tokenizer."""
    counts = REAL["pooling_tokenize"]
    for case in ("score_score", "rerank_rerank", "rerank_top_n", "score_data"):
        body = POOL[case]["request"]["body"]
        left = body.get("text_1") or body.get("query") or body.get("data_1")
        right = body.get("text_2") or body.get("documents") or body.get("data_2")
        texts = (left if isinstance(left, list) else [left]) + right
        assert POOL[case]["body"]["usage"]["prompt_tokens"] == sum(counts[t] for t in texts)
    cluster = await start(runner="pooling")
    got = (await ask(cluster, "rerank_rerank")).json()
    async with httpx.AsyncClient(timeout=30) as http:
        tok = [
            (await http.post(cluster.urls[0] + "/tokenize", json={"prompt": t})).json()["count"]
            for t in [
                "capital of France",
                "Paris is the capital.",
                "Bananas are yellow.",
                "France is in Europe.",
            ]
        ]
    assert got["usage"] == {"prompt_tokens": sum(tok), "total_tokens": sum(tok)}


@pytest.mark.parametrize(
    "case",
    ["score_n_to_m", "score_empty", "score_missing", "rerank_top_n_negative", "rerank_no_documents",
     "rerank_missing_query", "rerank_unknown_model"],
)  # fmt: skip
async def test_errors_are_vllms(start: StartCluster, case: str) -> None:
    cluster = await start(runner="pooling")
    got = await ask(cluster, case)
    want = POOL[case]
    assert got.status_code == want["status"]
    expected = json.loads(json.dumps(want["body"]).replace("tiny-llama", MODEL))
    assert got.json() == expected


async def test_too_long_input_is_vllms_400(start: StartCluster) -> None:
    cluster = await start(runner="pooling", max_model_len=64)
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.post(cluster.urls[0] + "/score", json={"text_1": "word " * 100, "text_2": "x"})
    want = POOL["score_too_long"]["body"]["error"]["message"].replace("2048", "64").replace("2049", "65")
    assert got.status_code == 400
    assert got.json()["error"] == {
        "message": want,
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }


async def test_bi_encoder_score_is_the_cosine_of_the_embeddings(start: StartCluster, client: Sdk) -> None:
    cluster = await start(runner="pooling")
    sdk = client(cluster.urls[0])
    emb = await sdk.embeddings.create(
        model=MODEL, input=["the sea", "the land", "the sea"], encoding_format="float"
    )
    vec = [d.embedding for d in emb.data]
    async with httpx.AsyncClient(timeout=30) as http:
        got = (
            await http.post(
                cluster.urls[0] + "/score", json={"text_1": "the sea", "text_2": ["the land", "the sea"]}
            )
        ).json()
    cos = math.fsum(x * y for x, y in zip(vec[0], vec[1], strict=True))
    assert got["data"][0]["score"] == pytest.approx(cos, abs=1e-9)
    assert got["data"][1]["score"] == pytest.approx(1.0, abs=1e-9)  # the same text: the same unit vector


async def test_cross_encoder_ranks_shared_words_first(start: StartCluster) -> None:
    cluster = await start(runner="pooling", convert="classify")
    docs = ["bananas are yellow", "the capital of France is Paris", "trains run on time"]
    async with httpx.AsyncClient(timeout=30) as http:
        first = (
            await http.post(
                cluster.urls[0] + "/rerank", json={"query": "capital of France", "documents": docs}
            )
        ).json()
        again = (
            await http.post(
                cluster.urls[0] + "/v2/rerank", json={"query": "capital of France", "documents": docs}
            )
        ).json()
        embed = await http.post(cluster.urls[0] + "/v1/embeddings", json={"input": "x"})
    assert first["results"][0]["index"] == 1
    assert all(0.0 < r["relevance_score"] < 1.0 for r in first["results"])
    assert first["results"] == again["results"]  # deterministic
    assert embed.status_code == 404  # a classify model serves no embeddings, as in vLLM
