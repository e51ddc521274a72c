"""The P/D hook the proxy calls before it posts to the chosen decode endpoint.

Flow for a model with a `disaggregation:` profile (llm-d's disagg profile handler, run from the gateway):
1. The proxy routes the model's decode pool (`decode_candidates`) with the router as usual: load and KV.
2. `prepare` decides whether remote prefill pays (`protocol.remote_prefill_pays` on the decode decision's
   prompt and predicted-cached tokens); if not, the original bytes go to the decode endpoint.
3. Otherwise it routes the prefill pool with the router (prefix cost included), sends the prefill request
   (`protocol.prefill_body`), reads the prefiller's `kv_transfer_params` and returns the decode body carrying
   them; the proxy then streams the decode answer to the client through its normal forward path, with the
   cached-token count rewritten (`answer.CachedTokensAnswer`).
4. Any failure of the prefill hop (no prefill endpoint, connection error, timeout, error status, an answer
   without transfer parameters) gives back the original bytes: the decode endpoint prefills locally and the
   client sees no error.
In-flight accounting: the prefill hop has its own router decision, released here exactly once
(`on_first_token` when its answer arrives, `on_finish` always); the decode decision stays the proxy's.
Traces (when `observability.tracing` is on): each hop is a CLIENT child span of the request's span, `prefill`
around the prefill request and `decode` from the decode request to the end of its answer (`PdSend.post`),
and each engine gets its own hop's `traceparent`; the request span gets the P/D summary (`ATTR_PD_*`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CollectorRegistry

from eksinfer.errors import EksinferError
from eksinfer.gateway import tracing as tr
from eksinfer.gateway.endpoints import EndpointRegistry
from eksinfer.gateway.pd.answer import CachedTokensAnswer
from eksinfer.gateway.pd.config import PdProfile
from eksinfer.gateway.pd.metrics import PdMetrics
from eksinfer.gateway.pd.protocol import (
    PD_PATHS,
    PrefillAnswerError,
    decode_body,
    prefill_body,
    read_prefill_answer,
    remote_prefill_pays,
)
from eksinfer.gateway.pd.traced import TracedAnswer
from eksinfer.gateway.scheduling.framework import Decision, EndpointState
from eksinfer.gateway.upstream import EngineLinkError, UpstreamPool, UpstreamResponse
from eksinfer.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from eksinfer.gateway.proxy import RouterLike

log = logging.getLogger(__name__)

_PASS_HEADERS = ("traceparent", "tracestate")


@dataclass(frozen=True, slots=True)
class PdSend:
    """What the proxy sends to the decode endpoint, and how to read its answer back."""

    body: bytes
    explain: str
    cached_tokens: int | None = None  # set after a remote prefill: the answer's usage is rewritten
    decode_span: Mapping[str, Any] | None = None  # the decode hop span's attributes

    def wrap(self, upstream: UpstreamResponse) -> UpstreamResponse:
        if self.cached_tokens is None:
            return upstream
        return CachedTokensAnswer(upstream, self.cached_tokens)

    async def post(
        self, upstream: UpstreamPool, url: str, path: str, headers: dict[str, str]
    ) -> UpstreamResponse:
        """The decode request, in its own hop span when tracing is on (ended when the answer is closed)."""
        hop = tr.start_hop("decode", self.decode_span or {})
        if hop is tr.NO_HOP:
            return self.wrap(await upstream.post(url, path, self.body, headers))
        headers.update(hop.headers)  # this hop's traceparent, not the request span's
        try:
            answer = await upstream.post(url, path, self.body, headers)
        except BaseException as err:
            hop.set({tr.ATTR_PD_OUTCOME: "connect"})
            hop.end(error=f"decode request failed: {type(err).__name__}")
            raise
        return TracedAnswer(self.wrap(answer), hop)


class _Fallback(Exception):
    """The prefill hop failed; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class PdCoordinator:
    """One per runtime; holds no per-request state between calls."""

    def __init__(
        self,
        profiles: Mapping[str, PdProfile],
        registry: EndpointRegistry,
        router: RouterLike,
        upstream: UpstreamPool,
        metrics_registry: CollectorRegistry,
    ) -> None:
        self._profiles = dict(profiles)
        self._registry = registry
        self._router = router
        self._upstream = upstream
        self.metrics = PdMetrics(metrics_registry)
        self._warn = RateLimitedLog(log)

    def disaggregated(self, model: str) -> bool:
        """True when `model` is prefilled on another pool (its decode endpoint computes no prompt)."""
        return model in self._profiles

    def decode_candidates(self, model: str, candidates: Sequence[EndpointState]) -> list[EndpointState]:
        """A P/D model decodes only on its decode pool; other models keep every candidate."""
        profile = self._profiles.get(model)
        if profile is None:
            return list(candidates)
        return [ep for ep in candidates if ep.pool == profile.decode_pool]

    async def prepare(
        self, path: str, raw: bytes, decision: Decision, model: str, headers: Mapping[str, str]
    ) -> PdSend | None:
        """The bytes for the decode endpoint; None when the model or route has no P/D profile."""
        profile = self._profiles.get(model)
        if profile is None or path not in PD_PATHS:
            return None
        started = time.perf_counter()
        uncached = max(0, decision.prompt_tokens - decision.predicted_cached_tokens)
        if not remote_prefill_pays(
            decision.prompt_tokens, decision.predicted_cached_tokens, profile.min_uncached_tokens
        ):
            self.metrics.decided(model, "local")
            explain = f"pd=local uncached_tokens={uncached} < {profile.min_uncached_tokens}"
            return PdSend(raw, explain, decode_span=_traced(decision, model, "local"))
        body = msgspec.json.decode(raw)  # the proxy already parsed it once: valid JSON object
        if "kv_transfer_params" in body:  # the client runs its own P/D: leave its request alone
            self.metrics.decided(model, "local")
            explain = "pd=local client sent kv_transfer_params"
            return PdSend(raw, explain, decode_span=_traced(decision, model, "local"))
        try:
            params, cached, prefill_s, pdecision = await self._prefill(profile, path, body, model, headers)
        except _Fallback as why:
            self.metrics.fell_back(model, why.reason)
            self._warn.warning(f"pd {why.reason}", "P/D prefill for %s fell back to local: %s", model, why)
            explain = f"pd=fallback reason={why.reason} uncached_tokens={uncached}"
            span = _traced(decision, model, "fallback", {tr.ATTR_PD_FALLBACK_REASON: why.reason})
            return PdSend(raw, explain, decode_span=span)
        send = decode_body(body, params)
        self.metrics.remote_done(model, prefill_s, time.perf_counter() - started - prefill_s)
        explain = (
            f"pd=remote uncached_tokens={uncached} prefill_cached_tokens={cached} "
            f"prefill_ms={prefill_s * 1000:.1f} prefill=[{pdecision.explain()}]"
        )
        prefill = {
            tr.ATTR_PD_PREFILL_ENDPOINT: pdecision.endpoint.id,
            tr.ATTR_PD_PREFILL_POOL: pdecision.endpoint.pool,
            tr.ATTR_PD_PREFILL_DURATION: prefill_s,
            tr.ATTR_PD_PREFILL_CACHED: cached,
        }
        span = _traced(decision, model, "remote", prefill)
        return PdSend(send, explain, cached_tokens=cached, decode_span=span)

    async def _prefill(
        self,
        profile: PdProfile,
        path: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> tuple[dict[str, Any], int, float, Decision]:
        """Routes the prefill pool and runs the prefill request; raises `_Fallback` on any failure."""
        candidates = [ep for ep in self._registry.candidates(model) if ep.pool == profile.prefill_pool]
        if not candidates:
            raise _Fallback("no_prefill_endpoint", f"no healthy endpoint in pool {profile.prefill_pool!r}")
        try:
            if profile.prefill_profile is None:
                pdecision = await self._router.route(model, body, headers, candidates)
            else:
                pdecision = await self._router.route(
                    model, body, headers, candidates, profile=profile.prefill_profile
                )
        except EksinferError as err:
            raise _Fallback("no_prefill_endpoint", str(err)) from None
        ok = False
        hop = tr.start_hop("prefill", _hop_attributes(pdecision, model, "prefill"))
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(profile.prefill_timeout_s):
                status, answer = await self._post(pdecision.endpoint, path, body, headers, hop.headers)
            self._router.on_first_token(pdecision)
            hop.set({tr.ATTR_STATUS: status})
            if status >= 400:
                raise _Fallback("status", f"prefill endpoint {pdecision.endpoint.id} answered {status}")
            try:
                params, cached = read_prefill_answer(answer)
            except PrefillAnswerError as err:
                raise _Fallback("invalid_answer", f"{pdecision.endpoint.id}: {err}") from None
            ok = True
            hop.set({tr.ATTR_PD_OUTCOME: "ok", tr.ATTR_PD_PREFILL_CACHED: cached})
            return params, cached, time.perf_counter() - sent, pdecision
        except TimeoutError:
            msg = f"prefill endpoint {pdecision.endpoint.id} took over {profile.prefill_timeout_s:g} s"
            raise _Fallback("timeout", msg) from None
        except EngineLinkError as err:
            raise _Fallback("connect", f"prefill endpoint {pdecision.endpoint.id}: {err}") from None
        finally:
            self._router.on_finish(pdecision, ok)
            _end_prefill_hop(hop, ok)

    async def _post(
        self,
        ep: EndpointState,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        trace: Mapping[str, str],
    ) -> tuple[int, bytes]:
        """One prefill request; the connection closes (and the engine aborts) if the wait is cancelled.
        `trace`: the hop span's `traceparent` when tracing is on (else the client's trace headers pass)."""
        out = {"Content-Type": "application/json", "x-request-id": uuid.uuid4().hex}
        for name in _PASS_HEADERS:
            value = trace.get(name, headers.get(name))
            if value is not None:
                out[name] = value
        upstream = await self._upstream.post(ep.url, path, msgspec.json.encode(prefill_body(body, path)), out)
        try:
            return upstream.status, await upstream.read()
        finally:
            upstream.close()


def _hop_attributes(decision: Decision, model: str, role: str) -> dict[str, Any]:
    ep = decision.endpoint
    return {
        tr.ATTR_PD_ROLE: role,
        tr.ATTR_MODEL: model,
        tr.ATTR_ENDPOINT: ep.id,
        tr.ATTR_POOL: ep.pool,
        tr.ATTR_REASON: decision.reason,
        tr.ATTR_INPUT_TOKENS: decision.prompt_tokens,
        tr.ATTR_PREDICTED_CACHED: decision.predicted_cached_tokens,
    }


def _traced(
    decision: Decision, model: str, mode: str, summary: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The request span's P/D summary (set now) and the decode hop span's attributes; None without a
    request span (tracing off), so that nothing is built per request then."""
    if tr.current_span.get() is None:
        return None
    request = {tr.ATTR_PD_MODE: mode, tr.ATTR_PD_DECODE_ENDPOINT: decision.endpoint.id, **(summary or {})}
    tr.set_request_attributes(request)
    return {**_hop_attributes(decision, model, "decode"), **request}


def _end_prefill_hop(hop: tr.Hop, ok: bool) -> None:
    """Ends the prefill span: failed with the fallback reason (or the cancellation) unless `ok`. Called from
    the `finally` of the hop, where `sys.exc_info()` is the exception on its way out."""
    if ok:
        hop.end()
        return
    exc = sys.exc_info()[1]
    reason = exc.reason if isinstance(exc, _Fallback) else type(exc).__name__ if exc else "failed"
    hop.set({tr.ATTR_PD_OUTCOME: reason})
    hop.end(error=str(exc) if isinstance(exc, _Fallback) else reason)
