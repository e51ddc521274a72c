"""The run configuration: one pydantic model read from flags or a YAML file, with a description per field.

Load shape (exactly one of the two, or both for a capped open loop):
    concurrency   closed loop: that many requests in flight, the next sent as one finishes
    rate          open loop: arrivals at `rate` req/s (Poisson by default), `concurrency` then caps in-flight
Stop: `num_requests` measured requests, or `duration_s` of sending, whichever is set (default 100 requests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from eksinfer.errors import ConfigError
from eksinfer.strict import StrictModel, config_error


class _Strict(StrictModel):
    model_config = ConfigDict(allow_inf_nan=False)  # inf req/s, inf timeouts


class RandomWorkload(_Strict):
    """Independent prompts of random words; no reuse beyond `prefix_len` (vLLM's `random` dataset)."""

    type: Literal["random"] = "random"
    input_len: int = Field(256, ge=1, description="Prompt tokens (approximate, see prompts.py).")
    output_len: int | None = Field(None, ge=1, description="Output tokens; default: max_tokens.")
    range_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Lengths uniform in [len*(1-r), len*(1+r)] (vLLM's meaning)."
    )
    prefix_len: int = Field(0, ge=0, description="Tokens of one fixed prefix before every prompt.")


class SharedPrefixWorkload(_Strict):
    """inference-perf's shared_prefix: groups share a system prompt, each user asks its own question."""

    type: Literal["shared-prefix"] = "shared-prefix"
    num_groups: int = Field(10, ge=1, description="Distinct system prompts.")
    num_prompts_per_group: int = Field(10, ge=1, description="Questions per system prompt.")
    system_prompt_len: int = Field(100, ge=0, description="Tokens of each group's system prompt.")
    question_len: int = Field(50, ge=1, description="Tokens of each question.")
    output_len: int = Field(50, ge=1, description="Output tokens per request.")
    shuffle: bool = Field(True, description="Send prompts in a seeded random order (else group by group).")
    multi_turn: bool = Field(
        False,
        description="Send each group's questions as consecutive turns of one chat (enable_multi_turn_chat).",
    )


class MultiTurnWorkload(_Strict):
    """Conversations whose context grows turn by turn: each turn resends the history plus a new message."""

    type: Literal["multi-turn"] = "multi-turn"
    num_conversations: int = Field(10, ge=1, description="Conversations (each runs its turns in order).")
    turns: int = Field(5, ge=1, description="User turns per conversation.")
    common_prefix_len: int = Field(0, ge=0, description="Tokens of a system prompt shared by all.")
    system_prompt_len: int = Field(100, ge=0, description="Tokens of each conversation's own system prompt.")
    user_len: int = Field(50, ge=1, description="Tokens of each user message.")
    output_len: int = Field(50, ge=1, description="Output tokens per turn.")
    think_time_s: float = Field(0.0, ge=0.0, description="Pause between a reply and the next user turn.")


class ReplayWorkload(_Strict):
    """Prompts replayed from a local file: JSONL ({"prompt"} or {"messages"}) or ShareGPT JSON/JSONL."""

    type: Literal["replay"] = "replay"
    path: Path = Field(description="Local JSONL or ShareGPT JSON file.")
    output_len: int | None = Field(
        None, ge=1, description="Output tokens; default: the recorded answer's length, else max_tokens."
    )
    max_prompts: int | None = Field(None, ge=1, description="Read at most this many prompts.")
    multi_turn: bool = Field(
        False, description="Replay every user turn of a conversation, not just the first."
    )


Workload = Annotated[
    RandomWorkload | SharedPrefixWorkload | MultiTurnWorkload | ReplayWorkload, Field(discriminator="type")
]


class BenchSlo(_Strict):
    """Goodput SLOs (vLLM's --goodput): a request is good when it meets every SLO given."""

    ttft_ms: float | None = Field(None, gt=0, description="Time to first token, ms.")
    tpot_ms: float | None = Field(None, gt=0, description="Time per output token (after the first), ms.")
    e2e_ms: float | None = Field(None, gt=0, description="End-to-end latency, ms.")


class BenchConfig(_Strict):
    """Everything one run needs; `eksinfer bench --config run.yaml` reads the same fields."""

    target: str | list[str] = Field(
        description="Base URL(s), e.g. http://127.0.0.1:8000; several: round robin."
    )
    model: str = Field(description="Model name sent in every request (checked against /v1/models).")
    api_key: str | None = Field(None, description="Sent as 'Authorization: Bearer KEY'.")
    endpoint: Literal["completions", "chat"] = Field("completions", description="/v1/completions or chat.")
    stream: bool = Field(True, description="Stream (SSE); TTFT/ITL need it.")
    concurrency: int | None = Field(
        None, ge=1, description="Requests in flight (closed loop, or open-loop cap)."
    )
    rate: float | None = Field(None, gt=0, description="Arrival rate, req/s (open loop).")
    arrival: Literal["poisson", "constant"] = Field("poisson", description="Inter-arrival law at `rate`.")
    burstiness: float = Field(
        1.0, gt=0, description="Gamma shape of Poisson gaps (vLLM --burstiness): 1 Poisson, <1 burstier."
    )
    session_header: str | None = Field(
        None, description="Header carrying a per-conversation id, e.g. x-session-id, for session affinity."
    )
    num_requests: int | None = Field(None, ge=1, description="Measured requests (default 100).")
    duration_s: float | None = Field(None, gt=0, description="Send for this long instead of a count.")
    warmup: int = Field(0, ge=0, description="Requests sent first and left out of every figure.")
    max_tokens: int = Field(128, ge=1, description="Output tokens when the workload sets none.")
    ignore_eos: bool = Field(False, description="Send vLLM's ignore_eos so outputs have exact lengths.")
    workload: Workload = Field(default_factory=RandomWorkload, description="What to send.")
    seed: int = Field(0, description="Seed of prompts, lengths and arrivals.")
    slo: BenchSlo = Field(default_factory=BenchSlo, description="SLOs for goodput.")
    metrics_urls: list[str] = Field(
        default_factory=list, description="Engine /metrics URLs read before and after for the KV hit rate."
    )
    reset_prefix_cache: bool = Field(
        False,
        description="POST /reset_prefix_cache to each engine (metrics_urls' hosts, else targets) first.",
    )
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout.")
    check_model: bool = Field(True, description="GET /v1/models first and fail fast on a wrong name.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        if not self.target_urls:
            raise ValueError("target: at least one base URL")
        if self.concurrency is None and self.rate is None:
            object.__setattr__(self, "concurrency", 1)
        if self.num_requests is None and self.duration_s is None:
            object.__setattr__(self, "num_requests", 100)
        return self

    @property
    def target_urls(self) -> list[str]:
        urls = [self.target] if isinstance(self.target, str) else list(self.target)
        return [u.rstrip("/") for u in urls]


def load_config(data: dict[str, Any], source: str = "config") -> BenchConfig:
    """Validate a mapping into a BenchConfig; the error names the first bad field and what is wrong."""
    from pydantic import ValidationError

    try:
        return BenchConfig.model_validate(data)
    except ValidationError as err:
        raise config_error(err, source=source) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a one-line ConfigError."""
    import yaml

    from eksinfer import untrusted

    text = untrusted.read_text(path, field=None)
    try:
        data = untrusted.load_yaml(text, where=str(path), field=None)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def build_config(
    path: Path | None, flags: dict[str, Any], workload_type: str | None, workload_args: dict[str, Any]
) -> BenchConfig:
    """YAML file (if any) overlaid with the flags that were given and the workload settings.

    `workload_type` replaces the file's workload unless it names the same type; `workload_args` (from
    `--workload-arg KEY=VALUE`) then set fields of the workload.
    """
    data = read_yaml(path) if path else {}
    data.update({k: v for k, v in flags.items() if v is not None})
    workload = dict(data.get("workload") or {})
    if workload_type is not None and workload.get("type", "random") != workload_type:
        workload = {}
    workload.update(workload_args)
    if workload or workload_type:
        workload["type"] = workload_type or workload.get("type", "random")
        data["workload"] = workload
    return load_config(data, str(path) if path else "flags")


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """`KEY=VALUE` strings to a dict; values are read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", field=option)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out
