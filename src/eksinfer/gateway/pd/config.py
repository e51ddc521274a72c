"""The `disaggregation:` section of the gateway YAML: one P/D profile per model.

    disaggregation:
      kimi-k2.5: {prefill_pool: prefill, decode_pool: decode, min_uncached_tokens: 256, prefill_timeout_s: 30}

A model with a profile is routed on its decode pool first; the prefill pool gets a request only when the
decider says remote prefill pays (llm-d `prefix-based-pd-decider`: the prompt tokens the chosen decode
endpoint does not hold reach `min_uncached_tokens`). llm-d's sample configs use 8 or 16 tokens; a remote
prefill costs a second HTTP hop plus the KV transfer (prompt KV bytes over the link), so short prompts are
cheaper to prefill where they decode, hence the default of 256.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from eksinfer.strict import StrictModel


class PdProfile(StrictModel):
    prefill_pool: str = Field(description="Pool whose endpoints run the prefill hop (`pool:` of endpoints).")
    decode_pool: str = Field(description="Pool whose endpoints decode and stream the answer to the client.")
    min_uncached_tokens: int = Field(
        256,
        ge=0,
        description="Prompt tokens the chosen decode endpoint does not hold in its prefix cache from which "
        "the prefill runs remotely; below it the decode endpoint prefills locally. 0 always prefills "
        "remotely.",
    )
    prefill_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for the prefill answer; then the decode endpoint prefills locally (the "
        "client sees no error).",
    )
    prefill_profile: str | None = Field(
        None,
        description="Routing profile (preset name) for the prefill pool; default: the configured preset, "
        "whose prefix scorer sends a prompt where its prefix is cached.",
    )

    @model_validator(mode="after")
    def _two_pools(self) -> PdProfile:
        if self.prefill_pool == self.decode_pool:
            raise ValueError(f"prefill_pool and decode_pool must differ (both are {self.prefill_pool!r})")
        return self
