"""Log-probabilities for simulated tokens, in vLLM 0.32's chat, completions and `prompt_logprobs` shapes.

The simulator has no logits, so each position gets a made-up but proper distribution: 21 exponential
draws (the 20 candidates vLLM can list and "the rest of the vocabulary"), normalised, sorted; the
token the engine emitted takes the largest share (rank 1), the others are random vocabulary ids. Every
value is therefore <= 0, each list is sorted, and the listed probabilities sum to at most 1. The draws are
seeded by (request key, position, token id), so a repeated request gets the same numbers.

Shapes (vLLM `entrypoints/openai` protocol and serving code, 0.32):
- chat `choices[i].logprobs`: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
  "logprob", "bytes"}] * top_logprobs}]}` (top_logprobs defaults to 0: empty lists);
- completions `choices[i].logprobs`: `{"text_offset", "token_logprobs", "tokens", "top_logprobs"}` with
  one dict of max(logprobs, 1) `{token: logprob}` per position; with `echo` the prompt comes first and
  its first token has `None` for both;
- `prompt_logprobs`: `None` for the first prompt token, then `{str(id): {"logprob", "rank",
  "decoded_token"}}` holding the top max(prompt_logprobs, 1), the prompt token among them (rank 1).
"""

from __future__ import annotations

import array
import math
import random
import zlib
from collections.abc import Sequence
from typing import Any

from eksinfer.tokenize import Tokenizer

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
_FLOOR = -9999.0  # vLLM clamps -inf to this in responses


def request_key(prompt_ids: Sequence[int], seed: int | None, index: int) -> int:
    """The draws' seed for choice `index` of a request: its prompt, its `seed`, the choice."""
    return zlib.crc32(array.array("q", prompt_ids).tobytes()) ^ ((seed or 0) * 1_000_003 + index)


def top(key: int, position: int, token_id: int, k: int, vocab_size: int) -> list[tuple[int, float]]:
    """`token_id` and k - 1 (at least 0) other ids with their log-probabilities, most likely first."""
    rng = random.Random(f"{key}:{position}:{token_id}")
    width = max(k, 1)
    # always MAX_LOGPROBS + 1 draws, so a token's numbers do not depend on how many were asked for
    weights = sorted((rng.expovariate(1.0) for _ in range(MAX_LOGPROBS + 1)), reverse=True)
    weights[0] *= 3.0  # the emitted token is usually the clear favourite
    total = sum(weights)
    ids = [token_id]
    while len(ids) < width:
        other = rng.randrange(3, max(vocab_size, 4))
        if other not in ids:
            ids.append(other)
    return [(tid, max(math.log(w / total), _FLOOR)) for tid, w in zip(ids, weights[:width], strict=True)]


def _text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = _text(tokenizer, token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", errors="replace"))}


def chat_content(
    tokenizer: Tokenizer, key: int, ids: Sequence[int], first: int, k: int
) -> list[dict[str, Any]]:
    """The `logprobs.content` entries of output tokens `ids`, the first being output position `first`."""
    out = []
    for offset, token_id in enumerate(ids):
        ranked = top(key, first + offset, token_id, k, tokenizer.vocab_size)
        entry = _entry(tokenizer, token_id, ranked[0][1])
        entry["top_logprobs"] = [_entry(tokenizer, tid, lp) for tid, lp in ranked[:k]]
        out.append(entry)
    return out


def completion_block(
    tokenizer: Tokenizer,
    key: int,
    ids: Sequence[int],
    first: int,
    k: int,
    text_offset: int,
    *,
    prompt_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """A completions `logprobs` object for `ids` (after `prompt_ids` when echoing), offsets from
    `text_offset`."""
    block: dict[str, Any] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    offset = text_offset
    for i, token_id in enumerate(prompt_ids):
        text = _text(tokenizer, token_id)
        ranked = None if i == 0 else prompt_top(key, i, token_id, k, tokenizer.vocab_size)
        _add(block, offset, text, ranked, tokenizer, k)
        offset += len(text)
    for i, token_id in enumerate(ids):
        text = _text(tokenizer, token_id)
        _add(block, offset, text, top(key, first + i, token_id, k, tokenizer.vocab_size), tokenizer, k)
        offset += len(text)
    return block


def _add(
    block: dict[str, Any],
    offset: int,
    text: str,
    ranked: list[tuple[int, float]] | None,
    tokenizer: Tokenizer,
    k: int,
) -> None:
    block["text_offset"].append(offset)
    block["tokens"].append(text)
    if ranked is None:
        block["token_logprobs"].append(None)
        block["top_logprobs"].append(None)
        return
    block["token_logprobs"].append(ranked[0][1])
    block["top_logprobs"].append({_text(tokenizer, tid): lp for tid, lp in ranked[: max(k, 1)]})


def prompt_top(key: int, position: int, token_id: int, k: int, vocab_size: int) -> list[tuple[int, float]]:
    """Prompt positions draw from their own stream (a prompt token was read, not chosen)."""
    return top(key ^ 0x5EED, position, token_id, k, vocab_size)


def prompt_logprobs(tokenizer: Tokenizer, key: int, prompt_ids: Sequence[int], k: int) -> list[Any]:
    """vLLM's `prompt_logprobs` list: None, then the prompt token and the top-k others per position."""
    out: list[Any] = [None]
    for i in range(1, len(prompt_ids)):
        ranked = prompt_top(key, i, prompt_ids[i], k, tokenizer.vocab_size)
        out.append(
            {
                str(tid): {"logprob": lp, "rank": rank, "decoded_token": _text(tokenizer, tid)}
                for rank, (tid, lp) in enumerate(ranked, start=1)
            }
        )
    return out
