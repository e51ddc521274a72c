"""What a person asks the planner for: a model, its traffic, latency targets and constraints.

Plain frozen dataclasses (the CLI and tests build them); `validate()` turns bad values into UsageErrors that
name the flag. SLO presets follow the issue's reference targets: conversational TTFT < 2 s, batch < 5 s;
their TPOT targets (50 ms, about 20 tokens/s per user, faster than reading; 150 ms for batch) are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from eksinfer.catalog import ModelSpec, list_instances
from eksinfer.catalog.bedrock import MODEL_ID
from eksinfer.errors import UsageError
from eksinfer.perf.mix import PromptClass, single_shape

SLO_PRESETS: dict[str, tuple[float, float]] = {  # name -> (TTFT s, TPOT s)
    "conversational": (2.0, 0.05),
    "batch": (5.0, 0.15),
}
CAPACITY_TYPES = ("on-demand", "spot", "capacity-block", "reserved")
# Bounds on what a plan can be asked for: past them the arithmetic gives replica counts hundreds of digits
# long and "$inf/month". 100,000 requests/s is 8.6 billion a day, beyond any one model's deployment;
# 100,000 nodes is the most one EKS cluster supports; 10M tokens is beyond any model's context window.
MAX_REQUESTS_PER_S = 100_000.0
MAX_CONCURRENCY = 10_000_000
MAX_NODES = 100_000
MAX_TOKENS = 10_000_000


@dataclass(frozen=True, slots=True)
class Traffic:
    input_tokens: int = 1024
    output_tokens: int = 256
    requests_per_s: float | None = None  # exactly one of requests_per_s / concurrency (default 1 req/s)
    concurrency: int | None = None
    shared_prefix_ratio: float = 0.0  # share of prompt tokens served from the prefix cache, 0..1
    # classes of requests (share, prompt, output tokens), priced apart (perf.mix); empty: one class of
    # input_tokens / output_tokens. With a mix, input_tokens / output_tokens carry its means.
    prompt_mix: tuple[PromptClass, ...] = ()

    @property
    def classes(self) -> tuple[PromptClass, ...]:
        return self.prompt_mix or (PromptClass(1.0, self.input_tokens, self.output_tokens),)

    @property
    def is_mix(self) -> bool:
        """More than one request shape: priced class by class, not at the mean."""
        return not single_shape(self.classes)

    @property
    def longest_tokens(self) -> int:
        """Prompt + output tokens of the longest request (what --max-model-len must hold)."""
        return max(c.input_tokens + c.output_tokens for c in self.classes)


@dataclass(frozen=True, slots=True)
class Slo:
    preset: str = "conversational"
    ttft_s: float = 2.0
    tpot_s: float = 0.05

    @classmethod
    def from_preset(cls, preset: str, *, ttft_s: float | None = None, tpot_s: float | None = None) -> Slo:
        """A preset's targets, each overridable; overriding makes the preset `custom`."""
        if preset not in SLO_PRESETS and preset != "custom":
            raise UsageError(
                f"unknown SLO preset {preset!r}; known: {', '.join(SLO_PRESETS)}", field="--preset"
            )
        base_ttft, base_tpot = SLO_PRESETS.get(preset, SLO_PRESETS["conversational"])
        changed = (ttft_s is not None and ttft_s != base_ttft) or (tpot_s is not None and tpot_s != base_tpot)
        return cls(
            preset="custom" if changed else preset,
            ttft_s=base_ttft if ttft_s is None else ttft_s,
            tpot_s=base_tpot if tpot_s is None else tpot_s,
        )


@dataclass(frozen=True, slots=True)
class OnPremPool:
    gpu: str  # GPU catalog name
    gpus: int


@dataclass(frozen=True, slots=True)
class Constraints:
    instance_families: tuple[str, ...] = ()  # empty: every family in the catalog
    capacity_type: str = "on-demand"
    max_nodes: int | None = None
    monthly_budget_usd: float | None = None
    needs_mig: bool = False
    needs_dra: bool = False
    custom_ami: bool = False
    on_prem: OnPremPool | None = None
    precision: str | None = None  # None: search native and FP8
    kv_cache_dtype: str | None = None  # None: search auto and fp8 (where the GPU has FP8 tensor cores)
    prices: str | Path | None = None  # price book name or overrides file; None: the newest book
    region: str | None = None  # None: the book's own region (us-east-1)
    bedrock_fallback: bool = True  # Amazon Bedrock as the cascade's last tier (planner/fallback.py)
    bedrock_model: str | None = None  # None: the catalog's Bedrock model for the served model
    phase: str | None = None  # migration phase (planner.phases): its limits and its stack; None: full stack
    without: tuple[str, ...] = ()  # optional parts of the phase's stack left out on request


@dataclass(frozen=True, slots=True)
class PlanRequest:
    model: ModelSpec
    traffic: Traffic = field(default_factory=Traffic)
    slo: Slo = field(default_factory=Slo)
    constraints: Constraints = field(default_factory=Constraints)

    def validate(self) -> None:
        """Reject values no plan can be made from, naming the flag."""
        t, s, c = self.traffic, self.slo, self.constraints
        if t.input_tokens < 1:
            raise UsageError("must be >= 1", field="--input-tokens")
        if t.output_tokens < 1:
            raise UsageError("must be >= 1", field="--output-tokens")
        if t.requests_per_s is not None and t.concurrency is not None:
            raise UsageError("give --requests-per-s or --concurrency, not both", field="--concurrency")
        if t.input_tokens > MAX_TOKENS:
            raise UsageError(f"must be <= {MAX_TOKENS:,}", field="--input-tokens")
        if t.output_tokens > MAX_TOKENS:
            raise UsageError(f"must be <= {MAX_TOKENS:,}", field="--output-tokens")
        if t.requests_per_s is not None and not 0 < t.requests_per_s < math.inf:
            raise UsageError("must be a finite number > 0", field="--requests-per-s")
        if t.requests_per_s is not None and t.requests_per_s > MAX_REQUESTS_PER_S:
            raise UsageError(f"must be <= {MAX_REQUESTS_PER_S:,.0f}", field="--requests-per-s")
        if t.concurrency is not None and not 1 <= t.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"must be in [1, {MAX_CONCURRENCY:,}]", field="--concurrency")
        for cls in t.prompt_mix:
            if not (
                0 < cls.share <= 1
                and 1 <= cls.input_tokens <= MAX_TOKENS
                and 1 <= cls.output_tokens <= MAX_TOKENS
            ):
                raise UsageError(
                    f"share must be in (0, 1] and tokens in [1, {MAX_TOKENS:,}]", field="--prompt-mix"
                )
        if t.prompt_mix and abs(sum(cls.share for cls in t.prompt_mix) - 1.0) > 0.01:
            raise UsageError("shares must add up to 1", field="--prompt-mix")
        if not 0.0 <= t.shared_prefix_ratio < 1.0:
            raise UsageError("must be in [0, 1)", field="--shared-prefix-ratio")
        if not 0 < s.ttft_s < math.inf:
            raise UsageError("must be a finite number > 0", field="--ttft")
        if not 0 < s.tpot_s < math.inf:
            raise UsageError("must be a finite number > 0", field="--tpot")
        if c.capacity_type not in CAPACITY_TYPES:
            raise UsageError(f"must be one of {', '.join(CAPACITY_TYPES)}", field="--capacity-type")
        if c.max_nodes is not None and not 1 <= c.max_nodes <= MAX_NODES:
            raise UsageError(f"must be in [1, {MAX_NODES:,}]", field="--max-nodes")
        if c.monthly_budget_usd is not None and not 0 < c.monthly_budget_usd < math.inf:
            raise UsageError("must be a finite number > 0", field="--budget")
        if c.precision not in (None, "bf16", "fp8", "int4", "fp4", "mxfp4"):
            raise UsageError("must be bf16, fp8, int4, fp4 or mxfp4", field="--precision")
        if c.precision == "mxfp4" and self.model.native_precision != "mxfp4":
            raise UsageError(
                f"mxfp4 needs a checkpoint that ships MXFP4 weights (gpt-oss); {self.model.id}'s is "
                f"{self.model.native_precision}",
                field="--precision",
            )
        if c.kv_cache_dtype not in (None, "auto", "fp8"):
            raise UsageError("must be auto or fp8", field="--kv-cache-dtype")
        if c.needs_mig and c.needs_dra:
            raise UsageError(
                "MIG via the GPU Operator and DRA pods need different node pools", field="--needs-dra"
            )
        known = {i.family for i in list_instances(c.prices, c.region)}
        unknown = sorted(set(c.instance_families) - known)
        if unknown:
            raise UsageError(
                f"unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}", field="--families"
            )
        if c.bedrock_model is not None and not MODEL_ID.match(c.bedrock_model):
            raise UsageError("not a Bedrock model id, inference-profile id or ARN", field="--bedrock-model")
        if c.capacity_type in ("capacity-block", "reserved"):
            priced = [i for i in list_instances(c.prices, c.region) if i.price(c.capacity_type) is not None]
            if not priced:
                key = (
                    "capacity_block: {TYPE: USD per hour}"
                    if c.capacity_type == "capacity-block"
                    else "reserved_discount: {TYPE-or-FAMILY: fraction}"
                )
                raise UsageError(
                    f"the price book has no {c.capacity_type} prices (no current public AWS figure to "
                    f"ship); give yours in a --prices FILE with {key} (docs/planner.md)",
                    field="--capacity-type",
                )
        if c.on_prem is not None and c.on_prem.gpus < 1:
            raise UsageError("needs at least one GPU", field="--on-prem")
        if c.without and c.phase is None:
            raise UsageError("only with --phase", field="--without")
        if c.phase is not None:
            from eksinfer.planner.phases import check_request

            check_request(self, c.phase, c.without)
