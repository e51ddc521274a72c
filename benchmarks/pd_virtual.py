"""Aggregated and P/D serving of a prompt mix on the simulator's engine cores in virtual time (no HTTP, no
wall clock): the same step model and vLLM scheduler as `eksinfer sim`, without the CPU noise of many
streams in one process on a busy machine. Used by `make bench ARGS="pd --virtual"`.

Closed loop of `concurrency` clients, each sending its next request when the last one finishes. Routing
stands in for the gateway: least outstanding requests per engine; P/D sends a prompt to the prefill pool
when its uncached tokens reach `min_uncached_tokens` (the gateway's decider), the prefill engine runs it
with max_tokens 1, then the decode engine admits it, pulls its KV (a connector that claims every prompt
token but the last, as vLLM's NixlConnector does) for the modelled transfer time, recomputes the last
token and decodes.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from eksinfer.autoscale.replica import SyntheticHasher
from eksinfer.perf import EnginePerf
from eksinfer.perf.mix import PromptClass
from eksinfer.perf.serving import KV_TRANSFER_SETUP_S
from eksinfer.sim.core import CoreConfig, EngineCore
from eksinfer.sim.scheduler import SimRequest, StepPlan


@dataclass
class Finished:
    long: bool
    ttft_s: float
    tpot_s: float
    tokens: int
    done_s: float


class _Connector:
    """Claims every prompt token but the last for requests prefilled elsewhere; loads complete on events."""

    def __init__(self) -> None:
        self.remote: set[str] = set()
        self.started: list[SimRequest] = []

    def remote_tokens(self, req: SimRequest, num_local_computed: int) -> int:
        if req.request_id not in self.remote:
            return 0
        return max(0, req.num_prompt_tokens - 1 - num_local_computed)

    def start_load(self, req: SimRequest, num_local_blocks: int) -> None:
        self.started.append(req)

    def request_finished(self, req: SimRequest) -> bool:
        return False


@dataclass
class _Engine:
    core: EngineCore
    connector: _Connector | None
    outstanding: int = 0
    busy: bool = False
    plan: StepPlan | None = None


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    payload: object = field(compare=False)


def simulate(
    perf: EnginePerf,
    classes: Sequence[PromptClass],
    *,
    prefill_engines: int,
    decode_engines: int,
    concurrency: int,
    requests: int,
    kv_transfer_gbps: float,
    min_uncached_tokens: int = 256,
    seed: int = 1,
) -> list[Finished]:
    """Closed loop until `requests` finish; prefill_engines 0 is aggregated serving on decode_engines."""
    now = 0.0
    config = CoreConfig.sized_by(perf)

    def engine(pd_decode: bool) -> _Engine:
        core = EngineCore(config, perf=perf, sample_space=(0,), clock=lambda: now)
        conn = _Connector() if pd_decode else None
        if conn is not None:
            core.scheduler.connector = conn
        return _Engine(core, conn)

    prefill = [engine(False) for _ in range(prefill_engines)]
    decode = [engine(prefill_engines > 0) for _ in range(decode_engines)]
    events: list[_Event] = []
    seq = itertools.count()
    rng = random.Random(seed)
    ids = itertools.count()
    meta: dict[str, tuple[PromptClass, float, _Engine]] = {}  # request id -> class, client send time, engine
    finished: list[Finished] = []

    def push(t: float, kind: str, payload: object) -> None:
        heapq.heappush(events, _Event(t, next(seq), kind, payload))

    def least(pool: list[_Engine]) -> _Engine:
        return min(pool, key=lambda e: e.outstanding)

    def add(eng: _Engine, rid: str, c: PromptClass, max_tokens: int) -> None:
        eng.outstanding += 1
        eng.core.add_request(
            [0] * c.input_tokens,
            max_tokens=max_tokens,
            ignore_eos=True,
            hasher=SyntheticHasher([]),
            arrival_time=now,
            request_id=rid,
        )
        kick(eng)

    def send() -> None:
        c = rng.choices(list(classes), weights=[k.share for k in classes])[0]
        rid = str(next(ids))
        if prefill and c.input_tokens >= min_uncached_tokens:
            meta[rid] = (c, now, least(prefill))
            add(meta[rid][2], rid, c, 1)
        else:
            meta[rid] = (c, now, least(decode))
            add(meta[rid][2], rid, c, c.output_tokens)

    def kick(eng: _Engine) -> None:
        if eng.busy or not eng.core.has_work():
            return
        plan = eng.core.schedule(now)
        if eng.connector is not None:
            for req in eng.connector.started:
                size = req.num_prompt_tokens * perf.kv_bytes_per_token
                push(now + size / (kv_transfer_gbps * 1e9) + KV_TRANSFER_SETUP_S, "kv", (eng, req))
            eng.connector.started.clear()
        if not plan.scheduled:
            return
        eng.busy, eng.plan = True, plan
        push(now + eng.core.step_time_s(plan), "step", eng)

    def step_end(eng: _Engine) -> None:
        assert eng.plan is not None
        emitted = eng.core.complete_step(eng.plan, now)
        eng.busy, eng.plan = False, None
        for req in emitted:
            if req.finish_reason is None:
                continue
            eng.outstanding -= 1
            c, sent, _ = meta[req.request_id]
            if eng in prefill:  # the prompt is computed: the decode engine admits it and pulls its KV
                dec = least(decode)
                assert dec.connector is not None
                rid = req.request_id + "d"
                dec.connector.remote.add(rid)
                meta[rid] = (c, sent, dec)
                add(dec, rid, c, c.output_tokens)
                continue
            out = req.num_output_tokens
            tpot = (req.last_token_time - req.first_token_time) / max(1, out - 1)
            long = c.input_tokens >= min_uncached_tokens
            finished.append(Finished(long, req.first_token_time - sent, tpot, out, now))
            send()
        kick(eng)

    for _ in range(concurrency):
        send()
    while len(finished) < requests and events:
        ev = heapq.heappop(events)
        now = ev.time
        if ev.kind == "step":
            assert isinstance(ev.payload, _Engine)
            step_end(ev.payload)
        else:
            eng, req = ev.payload  # type: ignore[misc]
            eng.core.scheduler.finish_load(req, ok=True)
            kick(eng)
    return finished
