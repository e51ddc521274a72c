"""The `routing:` section of the gateway's YAML file (pydantic, `extra="forbid"`, every field described).

    routing:
      preset: kv-aware            # a built-in preset or a name under `profiles`
      block_size: 16              # until the engines report theirs (vllm:cache_config_info / events)
      tokenizer: {mode: auto}     # auto | hf | engine | builtin | approx
      profiles:
        mine:
          filters: [{type: healthy-filter}]
          scorers: [{type: precise-prefix-cache-scorer, weight: 3}, {type: queue-scorer, weight: 2}]
          picker: {type: max-score-picker}

`load_routing_config` turns validation errors into one-line `ConfigError`s naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError

from eksinfer.strict import StrictModel, config_error


class PluginRef(StrictModel):
    type: str = Field(description="registered plugin type name, e.g. queue-scorer")
    name: str | None = Field(None, description="label in decisions and metrics (default: the type)")
    weight: float = Field(1.0, ge=0, description="scorer weight in the sum (ignored for filters and pickers)")
    parameters: dict[str, Any] = Field(default_factory=dict, description="plugin parameters")

    @property
    def label(self) -> str:
        return self.name or self.type


class ProfileConfig(StrictModel):
    filters: list[PluginRef] = Field(default_factory=list, description="applied in order")
    scorers: list[PluginRef] = Field(default_factory=list, description="weighted, summed")
    picker: PluginRef = Field(
        default_factory=lambda: PluginRef(type="max-score-picker"), description="chooses one endpoint"
    )


class TokenizerConfig(StrictModel):
    mode: Literal["auto", "hf", "engine", "builtin", "approx"] = Field(
        "auto",
        description="hf: tokenizer.json + tokenizer_config.json from `path`; engine: the engine's POST "
        "/tokenize; builtin: the simulator's tokenizer (engines are eksinfer sims); approx: character "
        "blocks, no tokenizer; auto: hf when `path` is set, else engine",
    )
    path: str | None = Field(None, description="directory with tokenizer.json and tokenizer_config.json")
    offload_chars: int = Field(
        2048, ge=0, description="prompts longer than this tokenize and hash in a worker thread"
    )
    engine_timeout_s: float = Field(2.0, gt=0, description="timeout of one POST /tokenize")


class IndexConfig(StrictModel):
    speculative_ttl_s: float = Field(
        2.0, ge=0, description="life of the routed request's blocks before events"
    )
    default_capacity_blocks: int = Field(
        65536, ge=1, description="per-endpoint cap until its num_gpu_blocks is known"
    )


class EventsConfig(StrictModel):
    topic: str = Field(
        "", description="ZMQ SUB topic prefix (vLLM publishes kv@<pod>@<model> in llm-d setups)"
    )
    replay_port_offset: int | None = Field(
        None, description="replay (ROUTER) port = events port + offset when no replay endpoint is given"
    )
    replay_timeout_s: float = Field(1.0, gt=0, description="time to wait for one replay answer")
    reconnect_s: float = Field(1.0, gt=0, description="wait before re-creating a silent or failed socket")
    probe_s: float = Field(
        2.0, gt=0, description="ask the replay socket for missed batches after this long without a message"
    )
    silence_reconnect_s: float = Field(
        30.0, gt=0, description="re-create the SUB socket after this long without a message"
    )


class RoutingConfig(StrictModel):
    preset: str = Field("kv-aware", description="built-in preset or a key of `profiles`")
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict, description="custom profiles by name")
    block_size: int = Field(16, ge=1, description="engine block size until scraped or seen in events")
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig, description="how prompts are tokenized"
    )
    index: IndexConfig = Field(default_factory=IndexConfig, description="prefix index bounds and TTLs")
    events: EventsConfig = Field(default_factory=EventsConfig, description="KV-event subscription")
    session_header: str = Field("x-session-id", description="request header naming a session")
    debug_header: str | None = Field(
        "x-eksinfer-route", description="response header explaining the decision (None: off)"
    )
    seed: int | None = Field(None, description="random seed for pickers (tests, benchmarks)")


def load_routing_config(data: Mapping[str, Any] | None, *, prefix: str = "routing") -> RoutingConfig:
    """Validate a `routing:` mapping; the error names the first offending field (`routing.index.foo`)."""
    try:
        return RoutingConfig.model_validate(dict(data or {}))
    except ValidationError as err:
        raise config_error(err, prefix=prefix) from None
