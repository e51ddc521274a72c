"""`POST /v1/embeddings` for a simulated pooling model (vLLM 0.32: `--runner pooling`).

Each input (a string, a list of strings, a list of token ids, or a list of such lists; or chat
`messages`) is tokenized as vLLM tokenizes it and prefilled by the engine (so embeddings cost simulated
GPU time and queue like generation does), then mapped to a deterministic unit vector of the model's hidden
size: Gaussian draws seeded by a CRC-32 of the token ids, divided by their L2 norm. The same input gives
the same vector on every replica and run. `encoding_format` "float" (default) or "base64" (little-endian
float32, as vLLM and the `openai` SDK's default use); `dimensions` is refused as vLLM refuses it for a
model without Matryoshka support.
"""

from __future__ import annotations

import array
import base64
import math
import random
import sys
import zlib
from collections.abc import Sequence
from typing import Any

from eksinfer.sim import protocol as p


def inputs(body: dict[str, Any], ctx: p.ModelContext) -> list[list[int]]:
    """The token ids of every input of an embeddings request; vLLM's 400 for a malformed one."""
    tok = ctx.tokenizer
    if isinstance(body.get("messages"), list):
        return [tok.encode_chat(body["messages"])]
    raw = body.get("input")
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise p.ApiError(400, "input must be a string, a list of strings or token-id lists", param="input")
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append(tok.encode(item, add_special_tokens=True)[: ctx.max_model_len + 1])
        elif (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        ):
            if max(item) >= tok.vocab_size or min(item) < 0:
                raise p.ApiError(400, f"Token id {max(item)} is out of vocabulary")
            out.append(list(item))
        else:
            raise p.ApiError(
                400, "input must be a string, a list of strings or token-id lists", param="input"
            )
    for ids in out:
        too_long(len(ids), ctx.max_model_len)
    return out


def too_long(n: int, max_model_len: int) -> None:
    """vLLM 0.32's renderer check for a pooling input (no output tokens); text is tokenized up to
    max_model_len + 1 tokens, hence "at least" (captured on /score)."""
    if n <= max_model_len:
        return
    qualifier = "at least " if n == max_model_len + 1 else ""
    raise p.ApiError(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
        f"{qualifier}{n} input tokens, which exceeds this limit even without any output tokens. Please "
        f"reduce the length of the input prompt. (parameter=input_tokens, value={n})",
        param="input_tokens",
    )


def check_options(body: dict[str, Any]) -> str:
    """The encoding format; 400 for fields vLLM refuses on a model without Matryoshka support."""
    if body.get("dimensions") is not None:
        raise p.ApiError(
            400,
            "Model does not support matryoshka representation, changing output dimensions will lead to "
            "poor results.",
            param="dimensions",
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise p.ApiError(400, "encoding_format must be float or base64", param="encoding_format")
    return str(fmt)


def vector(ids: Sequence[int], size: int) -> list[float]:
    """A unit vector of `size` floats drawn from the ids' CRC-32."""
    rng = random.Random(zlib.crc32(array.array("q", ids).tobytes()))
    raw = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def encode(values: list[float], fmt: str) -> list[float] | str:
    if fmt == "float":
        return values
    packed = array.array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def response(
    rid: str, created: int, model: str, data: list[list[float] | str], prompt_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "list",
        "created": created,
        "model": model,
        "data": [{"index": i, "object": "embedding", "embedding": e} for i, e in enumerate(data)],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
