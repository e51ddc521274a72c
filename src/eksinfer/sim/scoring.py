"""`/score` and `/rerank` (also `/v1/score`, `/v1/rerank`, `/v2/rerank`) of a simulated pooling model.

vLLM 0.32 serves them for a pooling model whose task is `embed` (a bi-encoder: the score is the cosine of the
two inputs' embeddings) or `classify` with one label (a cross-encoder: the score is the model's relevance for
the pair). Shapes and checks as captured from vLLM 0.32 (tests/sim/data/vllm-0.32-leftovers.json):

- score bodies pair `queries`/`documents`, `queries`/`items`, `data_1`/`data_2` or `text_1`/`text_2`; each
  side a string or a list. 1:1, 1:N and N:N pairings are allowed ("Input lengths must be either 1:1, 1:N or
  N:N"); an empty side is "At least one text element must be given" / "... text_pair element ...".
- rerank has `query`, `documents` and `top_n` (0: all); results sorted by `relevance_score`, highest first,
  each with its `index` and `document: {"text", "multi_modal"}`.
- usage counts every input's tokens once (the query once, however many documents), as vLLM sums its engine
  inputs; ids are `score-<16 hex>` for both routes.

Bi-encoder scores are the dot product of the simulator's unit embedding vectors (`pooling.vector`), so
`/score` agrees with `/v1/embeddings`. Cross-encoder scores are a sigmoid of the pair's word overlap plus
seeded noise: documents that share the query's words rank first, as a trained reranker tends to rank them.
"""

from __future__ import annotations

import array
import math
import random
import zlib
from dataclasses import dataclass
from typing import Any

from eksinfer.sim import pooling
from eksinfer.sim import protocol as p

_SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """The parsed pairs: every distinct input's token ids, and the index pairs to score."""

    model: str
    inputs: list[list[int]]  # queries first, then documents
    pairs: list[tuple[int, int]]
    documents: list[str]  # rerank: the documents as sent
    top_n: int


def _side(value: Any, name: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(x, str) for x in items):
        raise p.ApiError(400, f"{name} must be a string or a list of strings (no media parts)", param=name)
    return list(items)


def _encode(texts: list[str], ctx: p.ModelContext) -> list[list[int]]:
    out = []
    for text in texts:
        ids = ctx.tokenizer.encode(text, add_special_tokens=True)[: ctx.max_model_len + 1]
        pooling.too_long(len(ids), ctx.max_model_len)
        out.append(ids)
    return out


def _pairs(n_left: int, n_right: int) -> list[tuple[int, int]]:
    if n_left == 0:
        raise p.ApiError(400, "At least one text element must be given")
    if n_right == 0:
        raise p.ApiError(400, "At least one text_pair element must be given")
    if n_left != 1 and n_left != n_right:
        raise p.ApiError(400, "Input lengths must be either 1:1, 1:N or N:N")
    return [(0 if n_left == 1 else i, n_left + i) for i in range(n_right)]


def _model(body: dict[str, Any], ctx: p.ModelContext) -> str:
    model = body.get("model")
    if model is None or model in ctx.names:
        return ctx.names[0] if model is None else str(model)
    raise p.ApiError(404, f"The model `{model}` does not exist.", type_="NotFoundError")  # captured: no param


def parse_score(body: dict[str, Any], ctx: p.ModelContext) -> ScoreRequest:
    for left, right in _SCORE_PAIRS:
        if left in body and right in body:
            break
    else:
        wanted = [f for pair in _SCORE_PAIRS for f in pair if f not in body]
        raise p.missing_fields(body, wanted)
    model = _model(body, ctx)
    queries, docs = _side(body[left], left), _side(body[right], right)
    pairs = _pairs(len(queries), len(docs))
    return ScoreRequest(model, _encode(queries + docs, ctx), pairs, [], 0)


def parse_rerank(body: dict[str, Any], ctx: p.ModelContext) -> ScoreRequest:
    missing = [f for f in ("query", "documents") if f not in body]
    if missing:
        raise p.missing_fields(body, missing)
    top_n = body.get("top_n", 0)
    if isinstance(top_n, bool) or not isinstance(top_n, int):
        raise p.ApiError(400, "top_n must be an integer", type_="Bad Request", param="body.top_n")
    if top_n < 0:
        detail = (
            "1 validation error:\n  {'type': 'greater_than_equal', 'loc': 'body.top_n', 'msg': 'Input should "
            f"be greater than or equal to 0', 'input': '{top_n}', 'ctx': {{'ge': 0}}}}"
        )
        raise p.ApiError(400, detail, type_="Bad Request", param="body.top_n")
    model = _model(body, ctx)
    query, docs = _side(body["query"], "query"), _side(body["documents"], "documents")
    pairs = _pairs(len(query), len(docs))
    return ScoreRequest(model, _encode(query + docs, ctx), pairs, docs, top_n)


def _overlap(a: list[int], b: list[int]) -> float:
    sa, sb = set(a[1:]), set(b[1:])  # BOS left out
    return len(sa & sb) / max(len(sa | sb), 1)


def scores(req: ScoreRequest, *, hidden_size: int, cross_encoder: bool) -> list[float]:
    """One score per pair: cosine of the embeddings (bi-encoder) or a relevance in (0, 1) (cross-encoder)."""
    if not cross_encoder:
        vectors = [pooling.vector(ids, hidden_size) for ids in req.inputs]
        return [sum(x * y for x, y in zip(vectors[i], vectors[j], strict=True)) for i, j in req.pairs]
    out = []
    for i, j in req.pairs:
        key = zlib.crc32(array.array("q", req.inputs[i] + [-1] + req.inputs[j]).tobytes())
        logit = 6.0 * _overlap(req.inputs[i], req.inputs[j]) - 2.0 + random.Random(key).gauss(0.0, 0.5)
        out.append(1.0 / (1.0 + math.exp(-logit)))
    return out


def usage_tokens(req: ScoreRequest) -> int:
    return sum(len(ids) for ids in req.inputs)


def score_response(rid: str, created: int, req: ScoreRequest, values: list[float]) -> dict[str, Any]:
    tokens = usage_tokens(req)
    return {
        "id": rid,
        "object": "list",
        "created": created,
        "model": req.model,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(values)],
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }


def rerank_response(rid: str, req: ScoreRequest, values: list[float]) -> dict[str, Any]:
    tokens = usage_tokens(req)
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)
    if 0 < req.top_n < len(order):
        order = order[: req.top_n]
    results = [
        {
            "index": i,
            "document": {"text": req.documents[i], "multi_modal": None},
            "relevance_score": values[i],
        }
        for i in order
    ]
    return {
        "id": rid,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }
