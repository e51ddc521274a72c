"""`kv_transfer_params` as vLLM 0.32's NixlConnector reads and writes them (nixl/pull_scheduler.py).

In: a request with `do_remote_decode: true` is a prefill whose blocks a decode engine will pull; one with
`do_remote_prefill: true` and `remote_engine_id`, `remote_request_id`, `remote_host`, `remote_port`,
`remote_block_ids` pulls its prompt's KV from that engine. Out (the prefill's response, non-streamed only, at
the top level of the completion / chat completion body): the dict `prefill_response` builds, in vLLM's key
order. `remote_block_ids` is a list per KV-cache group (one group for the models simulated here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_REMOTE_FIELDS = ("remote_engine_id", "remote_request_id", "remote_host", "remote_port")


def wants_remote_decode(params: dict[str, Any] | None) -> bool:
    return bool(params) and bool(params.get("do_remote_decode"))  # type: ignore[union-attr]


def wants_remote_prefill(params: dict[str, Any] | None) -> bool:
    return bool(params) and bool(params.get("do_remote_prefill"))  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """Where a decode request's KV lives: the prefill engine's side channel and its pinned blocks."""

    engine_id: str
    request_id: str
    host: str
    port: int
    block_ids: tuple[int, ...]
    cached_tokens: int | None  # remote_prefill_cached_tokens: what the prefiller had cached itself


def remote_prefill(params: dict[str, Any]) -> RemotePrefill | None:
    """The pull a `do_remote_prefill` request asks for; None when a field is missing or malformed (vLLM logs
    "Got invalid KVTransferParams" and the request is prefilled locally)."""
    if not all(params.get(k) is not None for k in _REMOTE_FIELDS):
        return None
    port = params["remote_port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    blocks = params.get("remote_block_ids") or []
    if not isinstance(blocks, list):
        return None
    if blocks and all(isinstance(g, list) for g in blocks):  # per KV-cache group (vLLM 0.32)
        blocks = blocks[0] if blocks else []
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        return None
    cached = params.get("remote_prefill_cached_tokens")
    return RemotePrefill(
        engine_id=str(params["remote_engine_id"]),
        request_id=str(params["remote_request_id"]),
        host=str(params["remote_host"]),
        port=port,
        block_ids=tuple(blocks),
        cached_tokens=cached if isinstance(cached, int) and not isinstance(cached, bool) else None,
    )


def prefill_response(
    *,
    block_ids: list[int],
    engine_id: str,
    request_id: str,
    host: str,
    port: int,
    tp_size: int,
    num_computed_tokens: int,
    cached_tokens: int,
) -> dict[str, Any]:
    """What a finished `do_remote_decode` request returns, key for key as vLLM 0.32 (the scheduler appends
    `remote_prefill_cached_tokens`, the prefiller's own cache hits, for the decoder to report as cached)."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [list(block_ids)],
        "remote_engine_id": engine_id,
        "remote_request_id": request_id,
        "remote_host": host,
        "remote_port": port,
        "tp_size": tp_size,
        "dcp_size": 1,
        "pp_size": 1,
        "remote_num_tokens": num_computed_tokens if block_ids else 0,
        "remote_blocks_expiry_time": None,
        "transfer_mode": "pull",
        "remote_prefill_cached_tokens": cached_tokens,
    }
