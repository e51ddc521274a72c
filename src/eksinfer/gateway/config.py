"""The gateway's one YAML file, validated at start so that every mistake names its field.

    server:      listen address, body limit, timeouts (connect / first token / idle stream)
    auth:        optional API keys, from a file (one per line) or an environment variable (comma-separated)
    endpoints:   a static list of engines, and/or Kubernetes pods found by namespace + label selector (one
                 selector or several, each with its pool)
    scrape:      how often each engine's /metrics is read and when its data counts as stale
    routing:     the routing section, validated by `eksinfer.gateway.routing.RoutingConfig`
    pools:       per pool: its kind (vllm engines, or a managed API such as Bedrock), routing preset and
                 context window; endpoints name their pool
    models:      per model: the cascade of pools, stream continuation, the TTFT SLO used for shedding
    resilience:  retries, retry budget, outlier ejection, circuit breakers, health checks, slow start
    observability: access log, traces, status page (`eksinfer.gateway.observe.ObservabilityConfig`)
    disaggregation: per model, a P/D profile (`eksinfer.gateway.pd.config.PdProfile`): which pools prefill
                 and decode it, and from how many uncached prompt tokens the prefill runs remotely

Pydantic models at the edge only (STYLE.md 10); the runtime reads plain attributes from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from eksinfer import untrusted
from eksinfer.errors import ConfigError
from eksinfer.gateway.observe import ObservabilityConfig
from eksinfer.gateway.pd.config import PdProfile
from eksinfer.gateway.resilience.config import ResilienceConfig
from eksinfer.gateway.scheduling.config import RoutingConfig, load_routing_config
from eksinfer.gateway.scheduling.presets import PRESET_NAMES
from eksinfer.strict import StrictModel, config_error


class ServerConfig(StrictModel):
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest request body accepted; larger ones get HTTP 413."
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="Time to open a connection to an engine.")
    engine_keepalive_s: float = Field(
        4.0,
        gt=0,
        description="Idle time after which the gateway closes a kept-alive engine connection; keep it under "
        "the engine's own (uvicorn's --timeout-keep-alive, 5 s by default in vLLM) and any proxy's between.",
    )
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="Time from sending a request to the engine's first response bytes."
    )
    idle_stream_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence between two chunks of a streamed response."
    )
    lora_adapter_routes: bool = Field(
        False,
        description="Serve vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter: each call goes to every "
        "healthy engine (of `model` when the body names one); the engines need "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING.",
    )
    response_ids_max_entries: int = Field(
        100_000,
        gt=0,
        description="Stored Responses-API ids the gateway remembers (id -> the engine that stored it), least "
        "recently used dropped first; a forgotten id is looked for on every engine.",
    )
    response_ids_ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="Time an unused stored-response id stays remembered (then it is looked for again).",
    )
    max_inflight: int = Field(
        10_000,
        gt=0,
        description="Requests in flight through the gateway (counted from the start of their body) before "
        "new ones get HTTP 429.",
    )
    max_connections: int = Field(
        4096,
        gt=0,
        description="Client connections served at a time; the next ones get HTTP 503 and are closed.",
    )
    idle_timeout_s: float = Field(
        75.0,
        gt=0,
        description="Time a client connection may stay idle between requests or take to send a request's "
        "headers before it is closed; keep it above the idle timeout of any load balancer in front (60 s "
        "on an AWS ALB by default).",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Time a client may take to send a request body; then HTTP 408."
    )
    route_headers: bool = Field(
        False,
        description="Send x-eksinfer-endpoint and the routing.debug_header explanation on responses. They "
        "name engine pod addresses, so they are off unless every client is trusted (`eksinfer up` turns "
        "them on for local work).",
    )
    drain_timeout_s: float = Field(
        60.0,
        gt=0,
        description="On SIGTERM, how long requests in flight (streams included) may finish before they are "
        "cut; keep the pod's terminationGracePeriodSeconds above it (eksinfer render does).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Gateway processes sharing the port (SO_REUSEPORT); each keeps its own routing state.",
    )

    @model_validator(mode="after")
    def _workers_need_a_port(self) -> ServerConfig:
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 needs a fixed port (port 0 would give each worker its own)")
        return self


class AuthConfig(StrictModel):
    api_keys_file: Path | None = Field(None, description="File with one accepted API key per line.")
    api_keys_env: str | None = Field(
        None, description="Environment variable holding accepted API keys, comma-separated."
    )

    def load_keys(self) -> frozenset[str]:
        """Reads the keys once at start; an empty set means authentication is off."""
        keys: set[str] = set()
        if self.api_keys_file is not None:
            text = untrusted.read_text(self.api_keys_file, field="auth.api_keys_file")
            keys.update(
                line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
            )
        if self.api_keys_env is not None:
            value = os.environ.get(self.api_keys_env, "")
            if not value.strip():
                raise ConfigError(
                    f"environment variable {self.api_keys_env} is empty", field="auth.api_keys_env"
                )
            keys.update(k.strip() for k in value.split(",") if k.strip())
        return frozenset(keys)


class StaticEndpoint(StrictModel):
    url: str = Field(description="Base URL of an OpenAI-compatible engine, e.g. http://10.0.0.5:8000.")
    pool: str = Field("default", description="Pool this endpoint belongs to.")
    kv_events: str | None = Field(
        None, description="ZMQ address of the engine's KV-event publisher, e.g. tcp://10.0.0.5:5557."
    )
    models: list[str] = Field(
        default_factory=list, description="Models served; empty means ask the engine's /v1/models."
    )

    @model_validator(mode="after")
    def _check_url(self) -> StaticEndpoint:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - parsing the port is the check (ValueError past 65535)
        except ValueError as err:
            raise ValueError(f"url {self.url!r} is not a valid URL: {err}") from None
        if not parts.hostname:
            raise ValueError(f"url {self.url!r} has no host")
        return self


class KubernetesDiscovery(StrictModel):
    namespace: str = Field(description="Namespace whose pods are watched.")
    label_selector: str = Field(description="Label selector of engine pods, e.g. app=vllm.")
    port: int = Field(8000, gt=0, le=65535, description="Engine HTTP port on each pod.")
    kv_events_port: int | None = Field(None, gt=0, le=65535, description="Engine KV-event port on each pod.")
    pool: str = Field("default", description="Pool the discovered pods belong to.")
    api_server: str | None = Field(
        None, description="Kubernetes API URL; default: the in-cluster address from KUBERNETES_SERVICE_HOST."
    )
    token_file: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"), description="Service-account token."
    )
    ca_file: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"), description="API server CA bundle."
    )


class EndpointsConfig(StrictModel):
    static: list[StaticEndpoint] = Field(default_factory=list, description="Fixed list of engines.")
    kubernetes: list[KubernetesDiscovery] = Field(
        default_factory=list,
        description="Discover engine pods with a watch: one selector (a mapping) or several (a list), e.g. "
        "a cloud pool and an on-prem pool.",
    )

    @field_validator("kubernetes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, dict | KubernetesDiscovery) else value


class ScrapeConfig(StrictModel):
    interval_s: float = Field(0.2, gt=0, description="Time between two reads of each engine's /metrics.")
    timeout_s: float = Field(1.0, gt=0, description="Timeout of one /metrics read.")
    stale_after_s: float = Field(2.0, gt=0, description="Age after which scraped data counts as stale.")
    unhealthy_after_failures: int = Field(
        3, gt=0, description="Consecutive failed reads after which an endpoint is taken out of routing."
    )


class VllmPoolConfig(StrictModel):
    kind: Literal["vllm"] = Field("vllm", description="Engines that speak vLLM's OpenAI API.")
    preset: str | None = Field(
        None, description="Routing preset or profile for this pool; default: routing.preset."
    )
    max_context_tokens: int | None = Field(
        None,
        gt=0,
        description="Longest prompt plus max_tokens this pool takes; longer requests go to the next tier.",
    )
    max_waiting: int | None = Field(
        None,
        ge=0,
        description="The pool sheds (the request goes to the next tier) when every endpoint reports at "
        "least this many waiting requests (vllm:num_requests_waiting); unset: never sheds on queue depth.",
    )


# The managed-API pool kinds and where their config model lives; imported only when a pool uses the kind.
MANAGED_KINDS: dict[str, tuple[str, str]] = {
    "bedrock": ("eksinfer.gateway.bedrock.config", "BedrockPoolConfig"),
}


def _pool_model(kind: str, field: str) -> type[StrictModel]:
    import importlib

    module, name = MANAGED_KINDS[kind]
    try:
        model: type[StrictModel] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"pool kind {kind!r} is not available in this build", field=field) from None
    return model


class ModelRoute(StrictModel):
    cascade: list[str] = Field(
        min_length=1, description="Pools tried in order; a request moves on when a pool cannot take it."
    )
    continue_streams: bool = Field(
        False,
        description="A stream that breaks after its first content byte continues on another endpoint or "
        "tier with the text already sent as an assistant prefix, instead of ending with an error event.",
    )
    ttft_slo_s: float | None = Field(
        None,
        gt=0,
        description="A pool (other than the last) whose predicted time to first token is above this "
        "sheds the request to the next tier.",
    )

    @field_validator("cascade")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a pool may appear only once in a cascade")
        return value


class GatewayConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server settings.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Optional API keys.")
    endpoints: EndpointsConfig = Field(default_factory=EndpointsConfig, description="Where the engines are.")
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig, description="Engine metrics scraping.")
    routing: dict[str, Any] = Field(
        default_factory=dict, description="Routing section (see eksinfer.gateway.routing.RoutingConfig)."
    )
    pools: dict[str, Any] = Field(
        default_factory=dict,
        description="Pools by name: {kind: vllm, preset, max_context_tokens, max_waiting} or a managed API "
        "({kind: bedrock, ...}); pools that endpoints name but that are not listed are vllm pools.",
    )
    models: dict[str, ModelRoute] = Field(
        default_factory=dict, description="Per model: cascade, continue_streams, ttft_slo_s."
    )
    resilience: ResilienceConfig = Field(
        default_factory=ResilienceConfig, description="Retries, budget, ejection, breakers, health checks."
    )

    @field_validator("pools", mode="after")
    @classmethod
    def _pools(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, entry in value.items():
            if isinstance(entry, StrictModel):
                out[name] = entry
                continue
            if entry is None:
                entry = {}
            if not isinstance(entry, dict):
                raise ValueError(f"pool {name!r} must be a mapping")
            # ConfigError, not ValueError: pydantic passes it through, so the field is `pools.NAME...`.
            kind = entry.get("kind", "vllm")
            if kind != "vllm" and kind not in MANAGED_KINDS:
                known = ", ".join(["vllm", *MANAGED_KINDS])
                raise ConfigError(f"unknown pool kind {kind!r}; known: {known}", field=f"pools.{name}.kind")
            try:
                model = VllmPoolConfig if kind == "vllm" else _pool_model(kind, f"pools.{name}.kind")
                out[name] = model.model_validate(entry)
            except ValidationError as err:
                raise config_error(err, prefix=f"pools.{name}") from None
        return out

    @model_validator(mode="after")
    def _cascades_name_pools(self) -> GatewayConfig:
        named = {"default", *self.pools, *(e.pool for e in self.endpoints.static)}
        named |= {k.pool for k in self.endpoints.kubernetes}
        for model, route in self.models.items():
            for i, pool in enumerate(route.cascade):
                if pool not in named:
                    raise ConfigError(
                        f"names pool {pool!r}, which no pool or endpoint defines",
                        field=f"models.{model}.cascade.{i}",
                    )
        return self

    observability: ObservabilityConfig = Field(
        default_factory=ObservabilityConfig,
        description="Access log, OpenTelemetry traces and the status page (eksinfer.gateway.observe).",
    )

    disaggregation: dict[str, PdProfile] = Field(
        default_factory=dict,
        description="Per model, prefill/decode disaggregation: the model is decoded on decode_pool and, when "
        "enough of its prompt is uncached there, prefilled on prefill_pool first (NIXL KV transfer).",
    )

    @model_validator(mode="after")
    def _pd_pools_exist(self) -> GatewayConfig:
        eps = self.endpoints
        if not eps.static and not eps.kubernetes:
            return self  # endpoints may come from the command line
        pools = {e.pool for e in eps.static} | {k.pool for k in eps.kubernetes}
        for model, profile in self.disaggregation.items():
            for name in ("prefill_pool", "decode_pool"):
                pool = getattr(profile, name)
                if pool not in pools:
                    known = ", ".join(sorted(pools))
                    # ConfigError passes through pydantic as is, with the field it names
                    raise ConfigError(
                        f"no endpoint is in pool {pool!r} (pools: {known})",
                        field=f"disaggregation.{model}.{name}",
                    )
        return self

    @model_validator(mode="after")
    def _prefill_gives_up_before_the_request(self) -> GatewayConfig:
        # The first-token timeout covers the prefill hop too: a prefill timeout at or above it would turn a
        # slow prefill into the client's 504 where the profile promises a local-prefill fallback.
        limit = self.server.first_token_timeout_s
        for model, profile in self.disaggregation.items():
            if profile.prefill_timeout_s >= limit:
                raise ConfigError(
                    f"{profile.prefill_timeout_s:g} s is not under server.first_token_timeout_s "
                    f"({limit:g} s): a slow prefill would fail the request, not fall back to local prefill",
                    field=f"disaggregation.{model}.prefill_timeout_s",
                )
        return self


def parse_config(data: object) -> GatewayConfig:
    """Validates a parsed YAML document; raises ConfigError naming the first bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the config file must be a mapping at the top level")
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise config_error(err) from None
    routing = validate_routing(config.routing)
    known = {*routing.profiles, *PRESET_NAMES}
    for name, pool in config.pools.items():
        preset = getattr(pool, "preset", None)
        if preset is not None and preset not in known:
            raise ConfigError(
                f"unknown routing preset {preset!r}; known: {', '.join(sorted(known))}",
                field=f"pools.{name}.preset",
            )
    return config


def validate_routing(section: dict[str, Any]) -> RoutingConfig:
    """The routing section validated with the router's own model; ConfigError names `routing.<field>`."""
    return load_routing_config(section)


def load_config(path: Path | None) -> GatewayConfig:
    """Reads the YAML file (or the defaults when no file is given)."""
    if path is None:
        return parse_config({})
    text = untrusted.read_text(path, field="--config")
    try:
        data = untrusted.load_yaml(text, where=str(path), field="--config")
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}", field="--config") from None
    return parse_config(data)


def with_overrides(
    config: GatewayConfig,
    *,
    endpoints: list[str] | None = None,
    preset: str | None = None,
    port: int | None = None,
    host: str | None = None,
    workers: int | None = None,
) -> GatewayConfig:
    """Applies CLI overrides; `--endpoints` replaces the static list (entries `URL` or `URL|ZMQ-ADDRESS`)."""
    data = config.model_dump(mode="python")
    if endpoints:
        static = []
        for entry in endpoints:
            url, _, kv = entry.partition("|")
            static.append({"url": url.strip().rstrip("/"), "kv_events": kv.strip() or None})
        data["endpoints"] = {"static": static, "kubernetes": []}
    if preset is not None:
        data["routing"] = {**data["routing"], "preset": preset}
    if port is not None:
        data["server"]["port"] = port
    if host is not None:
        data["server"]["host"] = host
    if workers is not None:
        data["server"]["workers"] = workers
    return parse_config(data)
