"""`eksinfer sim`: simulated vLLM engines, with `vllm serve`'s flag names so one can replace the other."""

from __future__ import annotations

import json
import os

import typer

from eksinfer.errors import ConfigError, UsageError


def _env_flag(name: str) -> bool:
    """A vLLM boolean environment variable ("1"/"true" on, as vLLM's envs module reads it)."""
    return os.environ.get(name, "0").strip().lower() in ("1", "true")


def _lora_modules(values: list[str]) -> tuple[str, ...]:
    """vLLM's --lora-modules entries (`name=path` or a JSON object with "name" and "path") as name=path."""
    entries = []
    for value in values:
        for item in value.split():
            if item.startswith("{"):
                try:
                    raw = json.loads(item)
                    name, path = raw.get("name"), raw.get("path", "")
                except (json.JSONDecodeError, AttributeError) as err:
                    raise UsageError(f"bad JSON {item!r}", field="--lora-modules") from err
            else:
                name, _, path = item.partition("=")
            if not isinstance(name, str) or not name or not isinstance(path, str):
                raise UsageError(f"no adapter name in {item!r}", field="--lora-modules")
            entries.append(f"{name}={path}" if path else name)
    return tuple(entries)


def register(app: typer.Typer) -> None:
    @app.command("sim", help="Run simulated vLLM engines that speak vLLM's wire interfaces.")
    def sim(
        model_tag: str = typer.Argument(
            None, metavar="[MODEL]", help="Catalog model (as `vllm serve MODEL`)."
        ),
        model: str = typer.Option(
            "llama-3.1-8b", "--model", help="Catalog model that sets memory and speed."
        ),
        gpu: str = typer.Option("H100", "--gpu", help="Simulated GPU (sizes KV cache, step time)."),
        replicas: int = typer.Option(1, "--replicas", help="Engines in this process; engine i on port+i."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port", help="HTTP port of engine 0 (0: any free port)."),
        served_model_name: list[str] = typer.Option([], "--served-model-name", help="Name(s) clients use."),
        tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "-tp"),
        gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization"),
        block_size: int = typer.Option(16, "--block-size"),
        num_gpu_blocks: int = typer.Option(
            None, "--num-gpu-blocks-override", "--num-gpu-blocks", help="KV blocks (default: from the model)."
        ),
        max_model_len: int = typer.Option(None, "--max-model-len"),
        max_num_seqs: int = typer.Option(None, "--max-num-seqs"),
        max_num_batched_tokens: int = typer.Option(None, "--max-num-batched-tokens"),
        enable_chunked_prefill: bool = typer.Option(
            True, "--enable-chunked-prefill/--no-enable-chunked-prefill"
        ),
        enable_prefix_caching: bool = typer.Option(
            True, "--enable-prefix-caching/--no-enable-prefix-caching"
        ),
        prefix_caching_hash_algo: str = typer.Option(
            "sha256_cbor", "--prefix-caching-hash-algo", help="sha256_cbor or sha256 (vLLM's default)."
        ),
        hash_seed: str = typer.Option(
            None,
            "--hash-seed",
            help="Root of block hashes (vLLM's PYTHONHASHSEED; default $PYTHONHASHSEED or vllm-none-hash).",
        ),
        kv_events_config: str = typer.Option(None, "--kv-events-config", help="vLLM's KV-events JSON."),
        kv_events_encoding: str = typer.Option(
            "map", "--kv-events-encoding", help="map (vLLM 0.32) or array."
        ),
        enable_prompt_tokens_details: bool = typer.Option(False, "--enable-prompt-tokens-details"),
        enable_auto_tool_choice: bool = typer.Option(
            False, "--enable-auto-tool-choice", help='Answer tool_choice "auto" (needs --tool-call-parser).'
        ),
        tool_call_parser: str = typer.Option(None, "--tool-call-parser", help="vLLM's tool parser name."),
        reasoning_parser: str = typer.Option(
            None, "--reasoning-parser", help="vLLM's reasoning parser: answers start with `reasoning`."
        ),
        runner: str = typer.Option(
            "generate", "--runner", help="generate, or pooling (serves /v1/embeddings, /score, /rerank)."
        ),
        convert: str = typer.Option(
            "embed", "--convert", help="Pooling task: embed (bi-encoder) or classify (cross-encoder)."
        ),
        lora_modules: list[str] = typer.Option(
            [], "--lora-modules", help="Adapters: name=path (repeatable)."
        ),
        enable_lora: bool = typer.Option(False, "--enable-lora", help="Serve LoRA adapters (vLLM's flag)."),
        max_loras: int = typer.Option(1, "--max-loras", help="Adapters in a batch (vLLM's --max-loras)."),
        tokenizer: str = typer.Option(
            None, "--tokenizer", help="Local HF tokenizer dir (default: built-in)."
        ),
        seed: int = typer.Option(0, "--seed"),
        time_scale: float = typer.Option(1.0, "--time-scale", help="1: simulated GPU speed; 0: flat out."),
        natural_output_tokens: int = typer.Option(
            256, "--natural-output-tokens", help="Mean length before EOS unless ignore_eos (0: never EOS)."
        ),
        fault_error_rate: float = typer.Option(0.0, "--fault-error-rate", help="Fraction answered 500."),
        fault_stall_rate: float = typer.Option(
            0.0, "--fault-stall-rate", help="Fraction held --fault-stall-s."
        ),
        fault_stall_s: float = typer.Option(0.0, "--fault-stall-s"),
        fault_slow_token_s: float = typer.Option(0.0, "--fault-slow-token-s", help="Extra seconds per step."),
        fault_crash_after: int = typer.Option(0, "--fault-crash-after", help="Die after N requests."),
        fault_events_drop_rate: float = typer.Option(0.0, "--fault-events-drop-rate"),
        fault_events_close_after: int = typer.Option(0, "--fault-events-close-after"),
        kv_transfer_config: str = typer.Option(
            None,
            "--kv-transfer-config",
            help="vLLM's KV-transfer JSON for P/D, e.g. "
            '\'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\'.',
        ),
        prefill_replicas: int = typer.Option(
            0, "--prefill-replicas", help="P/D: the first N engines are the prefill pool, the rest decode."
        ),
        kv_link: str = typer.Option(
            "efa", "--kv-link", help="P/D KV transfer link: nvlink (one node), efa, or tcp (no EFA)."
        ),
        kv_link_gbps: float = typer.Option(None, "--kv-link-gbps", help="Override the link's Gbit/s."),
        nixl_side_channel_port: int = typer.Option(
            None,
            "--nixl-side-channel-port",
            help="NIXL side channel of engine 0, engine i on +i "
            "(default $VLLM_NIXL_SIDE_CHANNEL_PORT or 5600).",
        ),
        log_level: str = typer.Option("info", "--log-level"),
    ) -> None:
        from eksinfer.kvcache.events import KVEventsConfig
        from eksinfer.kvcache.hashing import DEFAULT_HASH_SEED
        from eksinfer.sim.config import FaultOptions, SimOptions
        from eksinfer.sim.pd.config import SIDE_CHANNEL_HOST, SIDE_CHANNEL_PORT, KvTransferConfig
        from eksinfer.sim.run import serve

        if prefix_caching_hash_algo not in ("sha256_cbor", "sha256"):
            raise UsageError(
                "the simulator implements sha256_cbor and sha256", field="--prefix-caching-hash-algo"
            )
        if kv_events_encoding not in ("map", "array"):
            raise ConfigError("must be map or array", field="--kv-events-encoding")
        side_port = nixl_side_channel_port
        if side_port is None:
            env_port = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", str(SIDE_CHANNEL_PORT))
            if not env_port.isdigit():
                raise ConfigError(f"not a port: {env_port!r}", field="VLLM_NIXL_SIDE_CHANNEL_PORT")
            side_port = int(env_port)
        options = SimOptions(
            kv_transfer=KvTransferConfig.from_json(kv_transfer_config) if kv_transfer_config else None,
            prefill_replicas=prefill_replicas,
            kv_link=kv_link,
            kv_link_gbps=kv_link_gbps,
            nixl_side_channel_host=os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", SIDE_CHANNEL_HOST),
            nixl_side_channel_port=side_port,
            model=model_tag or model,
            gpu=gpu,
            served_model_name=tuple(n for value in served_model_name for n in value.split()),
            host=host,
            port=port,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_chunked_prefill=enable_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            prefix_caching_hash_algo="sha256" if prefix_caching_hash_algo == "sha256" else "sha256_cbor",
            hash_seed=hash_seed
            if hash_seed is not None
            else os.environ.get("PYTHONHASHSEED", DEFAULT_HASH_SEED),
            kv_events=KVEventsConfig.from_json(kv_events_config) if kv_events_config else KVEventsConfig(),
            kv_events_encoding="array" if kv_events_encoding == "array" else "map",
            enable_prompt_tokens_details=enable_prompt_tokens_details,
            enable_auto_tool_choice=enable_auto_tool_choice,
            tool_call_parser=tool_call_parser,
            runner=runner,
            convert=convert,
            enable_lora=enable_lora or bool(lora_modules),
            max_loras=max_loras,
            # vLLM reads these two from the environment; so does the simulator
            allow_runtime_lora_updating=_env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
            enable_responses_store=_env_flag("VLLM_ENABLE_RESPONSES_API_STORE"),
            reasoning_parser=reasoning_parser,
            lora_modules=_lora_modules(lora_modules),
            tokenizer=tokenizer,
            time_scale=time_scale,
            seed=seed,
            natural_output_tokens=natural_output_tokens,
            faults=FaultOptions(
                error_rate=fault_error_rate,
                stall_rate=fault_stall_rate,
                stall_s=fault_stall_s,
                slow_token_s=fault_slow_token_s,
                crash_after=fault_crash_after,
                events_drop_rate=fault_events_drop_rate,
                events_close_after=fault_events_close_after,
            ),
        )
        options.validate()
        serve(options, replicas, log_level=log_level)
