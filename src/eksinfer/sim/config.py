"""Options of a simulated engine (`eksinfer sim` flags), named as vLLM names them where vLLM has the flag.

`SimOptions` is a plain value; `resolve_engine_sizing` turns it into the numbers one engine runs with, taking
the unset ones (`num_gpu_blocks`, `max_model_len`, `max_num_seqs`, `max_num_batched_tokens`) from the
performance model for `--model` on `--gpu`, as vLLM sizes its KV cache from the GPU's free memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from eksinfer.errors import UsageError
from eksinfer.kvcache.events import KVEventsConfig
from eksinfer.kvcache.hashing import DEFAULT_HASH_SEED, HASH_ALGOS, HashAlgo
from eksinfer.sim.pd.config import LINKS, SIDE_CHANNEL_HOST, SIDE_CHANNEL_PORT, KvTransferConfig

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf

EventEncoding = Literal["map", "array"]


VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)  # vLLM's `BlockSize` (vllm/config/cache.py)


@dataclass(frozen=True, slots=True)
class FaultOptions:
    """Fault injection for resilience tests; all off by default."""

    error_rate: float = 0.0  # fraction of requests answered 500 before they reach the engine
    stall_rate: float = 0.0  # fraction of requests held `stall_s` seconds before admission
    stall_s: float = 0.0
    slow_token_s: float = 0.0  # extra wall seconds added to every engine step that emits tokens
    crash_after: int = 0  # after this many requests the replica stops serving (0: never)
    events_drop_rate: float = 0.0  # fraction of event batches not sent on PUB (still kept for replay)
    events_close_after: int = 0  # close the PUB socket after this many batches (0: never)

    def validate(self) -> None:
        for name in ("error_rate", "stall_rate", "events_drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"must be in [0, 1], got {value}", field=f"--fault-{name.replace('_', '-')}")
        for name in ("stall_s", "slow_token_s", "crash_after", "events_close_after"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN fails too; inf would stall every request
                raise UsageError("must be a finite number >= 0", field=f"--fault-{name.replace('_', '-')}")


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Everything one `eksinfer sim` process is configured with (one engine per replica)."""

    model: str = "llama-3.1-8b"  # catalog model that drives memory and step time
    gpu: str = "H100"
    served_model_name: tuple[str, ...] = ()  # names clients use; default: the model id
    host: str = "127.0.0.1"
    port: int = 8000  # replica i listens on port + i; 0 = any free port per replica
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    num_gpu_blocks: int | None = None  # vLLM --num-gpu-blocks-override
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    prefix_caching_hash_algo: HashAlgo = "sha256_cbor"
    hash_seed: str = DEFAULT_HASH_SEED  # vLLM: $PYTHONHASHSEED, else "vllm-none-hash"; roots every hash chain
    kv_events: KVEventsConfig = field(default_factory=KVEventsConfig)
    kv_events_encoding: EventEncoding = "map"
    enable_prompt_tokens_details: bool = False
    enable_auto_tool_choice: bool = False  # vLLM: lets tool_choice "auto" through (needs a parser)
    tool_call_parser: str | None = None  # vLLM's parser name; the simulator answers in OpenAI's shape
    reasoning_parser: str | None = None  # vLLM's parser name: output starts with `reasoning`, then content
    runner: str = "generate"  # vLLM --runner: "pooling" serves /v1/embeddings instead of generation
    convert: str = "embed"  # vLLM --convert for a pooling runner: embed (bi-encoder) or classify (1 label)
    enable_lora: bool = False  # vLLM --enable-lora (also implied by --lora-modules)
    max_loras: int = 1  # vLLM --max-loras: the `max_lora` label of vllm:lora_requests_info
    allow_runtime_lora_updating: bool = False  # $VLLM_ALLOW_RUNTIME_LORA_UPDATING: the load/unload routes
    enable_responses_store: bool = False  # $VLLM_ENABLE_RESPONSES_API_STORE: `store` and previous_response_id
    lora_modules: tuple[str, ...] = ()  # adapters served besides the base model: "name" or "name=path"
    tokenizer: str | None = None  # HF tokenizer directory; None: the built-in tokenizer
    time_scale: float = 1.0  # wall seconds per simulated second; 0 = as fast as possible
    seed: int = 0
    natural_output_tokens: int = 256  # mean length before the model "emits EOS" (0: never)
    faults: FaultOptions = field(default_factory=FaultOptions)
    # P/D disaggregation (sim/pd): vLLM's --kv-transfer-config, and what the simulated NIXL transfer crosses
    kv_transfer: KvTransferConfig | None = None
    kv_link: str = "efa"  # nvlink (same node), efa (between nodes), tcp (between nodes, no EFA)
    kv_link_gbps: float | None = None  # replaces the catalog's bandwidth for kv_link (Gbit/s)
    nixl_side_channel_host: str = SIDE_CHANNEL_HOST  # vLLM: VLLM_NIXL_SIDE_CHANNEL_HOST
    nixl_side_channel_port: int = SIDE_CHANNEL_PORT  # vLLM: VLLM_NIXL_SIDE_CHANNEL_PORT (+ rank); 0 = free
    prefill_replicas: int = 0  # the first N replicas form the prefill pool (kv_role kv_producer)
    # Request hardening (not vLLM flags; vLLM bounds request heads through uvicorn/h11, not bodies):
    max_request_body_bytes: int = 8 * 1024**2  # larger bodies get 413; the gateway's default limit too
    body_timeout_s: float = 60.0  # a body that takes longer gets 408
    keep_alive_timeout_s: float = 5.0  # vLLM's uvicorn --timeout-keep-alive (VLLM_HTTP_TIMEOUT_KEEP_ALIVE)
    max_connections: int = 4096  # then 503 and close

    def validate(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (
                self.block_size in VLLM_BLOCK_SIZES,
                "--block-size",
                f"must be one of {', '.join(map(str, VLLM_BLOCK_SIZES))} (vLLM's choices)",
            ),
            (0.0 < self.gpu_memory_utilization <= 1.0, "--gpu-memory-utilization", "must be in (0, 1]"),
            (self.tensor_parallel_size >= 1, "--tensor-parallel-size", "must be >= 1"),
            (self.time_scale >= 0.0, "--time-scale", "must be >= 0"),
            (self.natural_output_tokens >= 0, "--natural-output-tokens", "must be >= 0"),
            (0 <= self.port < 65536, "--port", "must be a TCP port"),
            (
                self.num_gpu_blocks is None or self.num_gpu_blocks >= 2,
                "--num-gpu-blocks-override",
                "must be >= 2",
            ),
            (self.max_model_len is None or self.max_model_len >= 1, "--max-model-len", "must be >= 1"),
            (self.max_num_seqs is None or self.max_num_seqs >= 1, "--max-num-seqs", "must be >= 1"),
            (
                self.max_num_batched_tokens is None or self.max_num_batched_tokens >= 1,
                "--max-num-batched-tokens",
                "must be >= 1",
            ),
            (
                self.prefix_caching_hash_algo in HASH_ALGOS,
                "--prefix-caching-hash-algo",
                f"the simulator implements {' and '.join(HASH_ALGOS)} (the reproducible ones)",
            ),
            (self.kv_events_encoding in ("map", "array"), "--kv-events-encoding", "must be map or array"),
            (
                not self.enable_auto_tool_choice or bool(self.tool_call_parser),
                "--tool-call-parser",
                "must be set with --enable-auto-tool-choice (as vLLM requires)",
            ),
            (self.runner in ("generate", "pooling"), "--runner", "must be generate or pooling"),
            (self.convert in ("embed", "classify"), "--convert", "must be embed or classify"),
            (self.max_loras >= 1, "--max-loras", "must be >= 1"),
            (self.kv_link in LINKS, "--kv-link", f"must be one of {', '.join(LINKS)}"),
            (
                self.kv_link_gbps is None or 0 < self.kv_link_gbps < math.inf,
                "--kv-link-gbps",
                "must be a number of Gbit/s > 0",
            ),
            (0 <= self.nixl_side_channel_port < 65536, "--nixl-side-channel-port", "must be a TCP port"),
            (self.prefill_replicas >= 0, "--prefill-replicas", "must be >= 0"),
            (
                not self.prefill_replicas or self.kv_transfer is not None,
                "--prefill-replicas",
                "needs --kv-transfer-config (prefill engines hand their KV to decode engines over NIXL)",
            ),
        ]
        for ok, flag, message in checks:
            if not ok:
                raise UsageError(message, field=flag)
        self.faults.validate()

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.served_model_name or (self.model,)

    @property
    def lora_adapters(self) -> dict[str, str]:
        """Adapter name -> path (vLLM hashes both); a bare name is its own path."""
        out = {}
        for entry in self.lora_modules:
            name, _, path = entry.partition("=")
            out[name] = path or name
        return out


@dataclass(frozen=True, slots=True)
class EngineSizing:
    """The resolved numbers an engine runs with."""

    num_gpu_blocks: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int


def build_perf(options: SimOptions) -> EnginePerf:
    """The performance model for the options' model and GPU (imported lazily: heavy catalog data)."""
    from eksinfer.catalog import get_gpu, get_model
    from eksinfer.perf import build_engine_perf

    return build_engine_perf(
        get_model(options.model),
        get_gpu(options.gpu),
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_utilization,
        block_size=options.block_size,
        max_model_len=options.max_model_len,
        num_gpu_blocks=options.num_gpu_blocks,
        max_num_batched_tokens=options.max_num_batched_tokens,
        max_num_seqs=options.max_num_seqs,
    )


def resolve_engine_sizing(options: SimOptions, perf: EnginePerf) -> EngineSizing:
    """Explicit flags win; the rest come from the performance model (vLLM's defaults for that GPU)."""
    blocks = options.num_gpu_blocks or perf.num_gpu_blocks
    capacity = (blocks - 1) * options.block_size  # block 0 is vLLM's null block
    mbt = options.max_num_batched_tokens or perf.max_num_batched_tokens
    # a sliding-window group reserves its window and the tokens in flight on top of the full groups' blocks
    capacity = perf.kv_layout.max_seq_tokens(capacity, perf.in_flight_tokens(mbt))
    max_model_len = options.max_model_len or min(perf.max_model_len, capacity)
    if max_model_len > capacity:  # vLLM refuses to start when one max-length request cannot fit
        raise UsageError(
            f"{max_model_len} tokens do not fit in {blocks} KV blocks of {options.block_size} "
            f"({capacity} usable tokens)",
            field="--max-model-len",
        )
    if not options.enable_chunked_prefill and options.max_num_batched_tokens is None:
        mbt = max(mbt, max_model_len)  # vLLM: without chunking a whole prompt must fit in one step
    if not options.enable_chunked_prefill and mbt < max_model_len:
        raise UsageError(
            f"{mbt} is smaller than max_model_len {max_model_len}; enable chunked prefill or raise it",
            field="--max-num-batched-tokens",
        )
    return EngineSizing(
        num_gpu_blocks=blocks,
        max_model_len=max_model_len,
        max_num_seqs=options.max_num_seqs or perf.max_num_seqs,
        max_num_batched_tokens=mbt,
    )
