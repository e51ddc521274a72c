"""The NIXL v2 request steps, as pure functions over request and answer bodies.

Steps (llm-d inference scheduler, `pkg/sidecar/proxy/connector_nixlv2.go` and `pkg/common/request`; vLLM
`distributed/kv_transfer/kv_connector/v1/nixl_connector.py`, `request_finished`):
1. Prefill request: the client's body with `kv_transfer_params = {do_remote_decode: true, do_remote_prefill:
   false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null}`, `stream`
   false, `stream_options` and `min_tokens` removed, `max_tokens` (and `max_completion_tokens` on chat) set to
   1, a fresh `x-request-id` header.
2. The prefiller computes the prompt, keeps its blocks for the decode side to pull and answers with
   `kv_transfer_params = {do_remote_prefill: true, do_remote_decode: false, remote_block_ids,
   remote_engine_id, remote_request_id, remote_host, remote_port, tp_size}` (null when the request did not
   end on its length cap, e.g. the one token was end-of-sequence: then there is nothing to pull).
3. Decode request: the client's body unchanged (stream, limits) plus the prefiller's `kv_transfer_params`.
   The decode engine counts the pulled tokens as computed, so its `cached_tokens` is rewritten to what the
   prefiller had cached (`answer.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

PD_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

# What a prefill request asks of vLLM's NixlConnector (step 1): "decode happens elsewhere, keep the blocks".
PREFILL_KV_TRANSFER_PARAMS: Mapping[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


class PrefillAnswerError(ValueError):
    """The prefiller's answer cannot drive a remote decode (not JSON, or no transfer parameters)."""


def remote_prefill_pays(prompt_tokens: int, cached_tokens: int, min_uncached_tokens: int) -> bool:
    """llm-d's prefix-based decider: the prompt tokens the decode endpoint would have to compute reach the
    threshold (0 disaggregates every request, like llm-d's always-disagg decider)."""
    uncached = max(0, prompt_tokens - cached_tokens)
    return uncached >= min_uncached_tokens


def prefill_body(body: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Step 1: a copy of the client's body turned into a one-token, non-streamed prefill request."""
    out = dict(body)
    out["kv_transfer_params"] = dict(PREFILL_KV_TRANSFER_PARAMS)
    out["max_tokens"] = 1
    if path == "/v1/chat/completions":
        out["max_completion_tokens"] = 1  # vLLM prefers it over max_tokens when both are present
    out.pop("min_tokens", None)  # a floor above the cap would be refused (min_tokens <= max_tokens)
    out["stream"] = False
    out.pop("stream_options", None)
    return out


def read_prefill_answer(raw: bytes) -> tuple[dict[str, Any], int]:
    """Step 2: the prefiller's `kv_transfer_params` and how many prompt tokens it had cached."""
    try:
        answer = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise PrefillAnswerError(f"prefill answer is not JSON: {err}") from None
    if not isinstance(answer, dict):
        raise PrefillAnswerError("prefill answer is not a JSON object")
    params = answer.get("kv_transfer_params")
    if not isinstance(params, dict) or not params.get("do_remote_prefill"):
        raise PrefillAnswerError("prefill answer carries no kv_transfer_params to pull from")
    return params, cached_tokens_of(answer.get("usage"))


def cached_tokens_of(usage: object) -> int:
    """`usage.prompt_tokens_details.cached_tokens`; vLLM sends null details when nothing was cached."""
    if not isinstance(usage, dict):
        return 0
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        return 0
    cached = details.get("cached_tokens")
    return cached if isinstance(cached, int) and cached >= 0 else 0


def decode_body(body: Mapping[str, Any], params: Mapping[str, Any]) -> bytes:
    """Step 3: the client's body with the prefiller's transfer parameters."""
    return msgspec.json.encode({**body, "kv_transfer_params": params})


def set_cached_tokens(usage: dict[str, Any], cached_tokens: int) -> None:
    """Rewrites a usage object in place so it reports the prefiller's cache hit."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        details["cached_tokens"] = cached_tokens
    elif cached_tokens > 0:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
