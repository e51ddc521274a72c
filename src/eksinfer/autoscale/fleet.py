"""The fleet simulation: a day of traffic through the gateway's routing onto autoscaled replicas.

Virtual time throughout.

One event loop in simulated seconds, no wall clock:
- arrivals from the trace go to the gateway, which picks a ready replica by the kv-aware preset's cost
  (gateway/scheduling/plugins/scorers/kv_cost.py, same weights, read from its parameter defaults):
  in-flight prompt tokens + prefill_weight x uncached prompt tokens + decode_tokens_per_request x in-flight
  requests, lowest wins (the max-score picker's choice). Matched tokens come from the replica's own block
  pool, which is what the gateway's precise index mirrors from KV events (without their lag). Requests that
  find no ready replica wait at the gateway;
- replicas (replica.py) are the simulator's engine core, advanced by macro-steps;
- the policy (policies.py) is evaluated every polling interval on Prometheus' view of the fleet;
- scale-up creates pods: on a node with a free slot a pod is ready after the model load (`load_time_s`);
  otherwise Karpenter launches a node and the pod is ready after the plan's node start-up (boot + image +
  weights). Scale-down removes the newest pods (booting first, as the ReplicaSet does): a ready pod stops
  receiving requests, finishes what it holds (draining), then goes; a node empty for `consolidateAfter`
  (what render writes) is terminated. GPU-hours and cost count node time, launch to termination.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eksinfer.autoscale.capacity import FleetSpec
from eksinfer.autoscale.policies import Observation, Policy
from eksinfer.autoscale.replica import Replica
from eksinfer.autoscale.trace import TraceRequest
from eksinfer.gateway.scheduling.plugins.scorers.kv_cost import KvCostScorer
from eksinfer.kvcache.hashing import BlockDigest
from eksinfer.sim.scheduler import SimRequest

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf

TTFT_WINDOW_S = 120.0  # the rendered TTFT query's rate window
SAMPLE_S = 60.0
_STEP, _READY, _TICK, _SAMPLE, _NODE = range(5)


@dataclass(slots=True)
class Node:
    launched_s: float
    ready_s: float  # booted with the image pulled; a pod then needs the model load
    slots: int
    pods: int = 0
    empty_since: float | None = None
    terminated_s: float | None = None


@dataclass(slots=True)
class Pod:
    index: int
    replica: Replica
    node: Node
    created_s: float
    ready_s: float
    state: str = "booting"  # booting, ready, draining, gone
    gone_s: float | None = None
    inflight_requests: int = 0
    inflight_prompt_tokens: int = 0


@dataclass(slots=True)
class FleetResult:
    """Per-request latencies and the fleet's cost; `report.py` summarises it."""

    policy: str
    settings: dict[str, object]
    duration_s: float
    arrival_s: list[float]
    ttft_s: list[float]
    tpot_s: list[float]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    node_seconds: float = 0.0
    gpus_per_node: int = 1
    node_price_per_hour: float = 0.0
    pod_seconds: float = 0.0  # pods alive (booting, ready or draining), integrated over time
    ready_seconds: float = 0.0
    busy_seconds: float = 0.0  # modelled GPU step time of all replicas
    peak_pods: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    steps: int = 0
    macro_runs: int = 0
    series_t: list[float] = field(default_factory=list)  # minute marks
    series_rate: list[float] = field(default_factory=list)
    series_pods: list[int] = field(default_factory=list)
    series_ready: list[int] = field(default_factory=list)
    series_ttft_p90: list[float] = field(default_factory=list)


def _cached_prefix_blocks(is_cached: Callable[[bytes], bool], digests: list[BlockDigest]) -> int:
    """How many leading blocks are cached, by binary search: the engine frees a request's blocks tail first,
    so what stays cached of a prefix is its head (the router's estimate; admission uses the exact walk)."""
    if not digests or not is_cached(digests[0]):
        return 0
    lo, hi = 1, len(digests)  # digests[:lo] cached; answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if is_cached(digests[mid - 1]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Fleet:
    """One policy over one trace; `run()` returns the result."""

    def __init__(
        self,
        trace: list[TraceRequest],
        spec: FleetSpec,
        perf: EnginePerf,
        policy: Policy,
        *,
        macro: bool = True,
        duration_s: float | None = None,
        initial_rate_per_s: float | None = None,
    ) -> None:
        self.trace = trace
        self.spec = spec
        self.perf = perf
        self.policy = policy
        self.macro = macro
        last = trace[-1].arrival_s if trace else 0.0
        self.duration_s = duration_s or max(3600.0, math.ceil(last / 3600.0) * 3600.0)
        params = KvCostScorer.Params()
        self.prefill_weight = params.prefill_weight
        self.decode_weight = params.decode_tokens_per_request
        n = len(trace)
        self.first = [math.nan] * n
        self.finish = [math.nan] * n
        self.pods: list[Pod] = []
        self.nodes: list[Node] = []
        self.events: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._versions: dict[int, int] = {}
        self.pending: deque[int] = deque()
        self.ttft_window: deque[tuple[float, float]] = deque()
        self.minute_ttfts: list[float] = []
        self.minute_arrivals = 0
        self.rate_per_min: list[float] = []
        self._group_digests: dict[int, list[BlockDigest]] = {}
        self.result = FleetResult(
            policy=policy.name,
            settings=policy.describe(),
            duration_s=self.duration_s,
            arrival_s=[r.arrival_s for r in trace],
            ttft_s=[],
            tpot_s=[],
            gpus_per_node=spec.gpus_per_node,
            node_price_per_hour=spec.node_price_per_hour,
        )
        if initial_rate_per_s is None:
            early = [r for r in trace if r.arrival_s < 900.0]
            initial_rate_per_s = len(early) / 900.0
        self.initial_rate = initial_rate_per_s
        self.now = 0.0
        self.routable: list[Pod] = []  # ready pods, oldest first
        self.n_alive = 0  # pods booting, ready or draining
        self.n_serving = 0  # pods ready or draining

    # --- events ------------------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, obj: object) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, obj))

    def _schedule_step(self, pod: Pod) -> None:
        t = pod.replica.next_event_s
        v = self._versions.get(pod.index, 0) + 1
        self._versions[pod.index] = v
        if t < math.inf:
            self._push(t, _STEP, (pod, v))

    # --- pods and nodes ----------------------------------------------------------------------------------

    def _new_pod(self, now: float, warm: bool) -> None:
        spec = self.spec
        node = next((n for n in self.nodes if n.terminated_s is None and n.pods < n.slots), None)
        if node is None:
            boot = 0.0 if warm else max(0.0, spec.node_startup_s - spec.pod_startup_s)
            node = Node(launched_s=now, ready_s=now + boot, slots=spec.replicas_per_node)
            self.nodes.append(node)
        node.pods += 1
        node.empty_since = None
        ready = now if warm else max(now, node.ready_s) + spec.pod_startup_s
        index = len(self.pods)
        replica = Replica(index, spec.core, self.perf, macro=self.macro, on_token=self._on_token)
        pod = Pod(index, replica, node, now, ready)
        self.pods.append(pod)
        self.n_alive += 1
        if warm:
            pod.state = "ready"
            self.routable.append(pod)
            self.n_serving += 1
        else:
            self._push(ready, _READY, pod)

    def _pod_gone(self, pod: Pod, now: float) -> None:
        self.n_alive -= 1
        if pod.state != "booting":
            self.n_serving -= 1
        pod.state = "gone"
        pod.gone_s = now
        node = pod.node
        node.pods -= 1
        if node.pods == 0:
            node.empty_since = now
            self._push(now + self.spec.consolidate_after_s, _NODE, node)

    def _scale_to(self, desired: int, now: float) -> None:
        live = [p for p in self.pods if p.state in ("booting", "ready")]
        if desired > len(live):
            self.result.scale_ups += 1
            for _ in range(desired - len(live)):
                self._new_pod(now, warm=False)
        elif desired < len(live):
            self.result.scale_downs += 1
            # the ReplicaSet deletes pods that are not ready first, then the newest
            victims = sorted(live, key=lambda p: (p.state != "booting", -p.created_s))
            for pod in victims[: len(live) - desired]:
                if pod.state == "booting":
                    self._pod_gone(pod, now)
                else:
                    pod.state = "draining"
                    self.routable.remove(pod)
                    if not pod.replica.has_work():
                        self._pod_gone(pod, now)

    # --- requests ----------------------------------------------------------------------------------------

    def _prefix_digests(self, group: int, blocks: int) -> list[BlockDigest]:
        known = self._group_digests.setdefault(group, [])
        for i in range(len(known), blocks):
            known.append(BlockDigest(b"g%d:%d" % (group, i)))
        return known[:blocks]

    def _route(self, i: int, now: float) -> None:
        r = self.trace[i]
        ready = self.routable
        if not ready:
            self.pending.append(i)
            return
        bs = self.spec.core.block_size
        digests = self._prefix_digests(r.prefix_group, r.prefix_tokens // bs) if r.prefix_group >= 0 else []
        inp, pw, dw = r.input_tokens, self.prefill_weight, self.decode_weight
        if not digests:
            uncached = pw * max(0, inp)
            costs = [pod.inflight_prompt_tokens + uncached + dw * pod.inflight_requests for pod in ready]
            bounds: list[int] = []
        else:
            # a replica in the middle of a run has not applied its allocations yet; bringing it up to date
            # (`sync`) only evicts (its decode blocks have no digest to cache), and the matched count can only
            # fall then, so the count read without syncing makes the cost a lower bound: only the replicas
            # whose bound could win are synced (a day over 32 replicas would otherwise sync most of them
            # on every arrival)
            first = digests[0]
            costs = []
            bounds = []
            for k, pod in enumerate(ready):
                rep = pod.replica
                matched = 0
                if rep.pool.is_cached(first):
                    matched = _cached_prefix_blocks(rep.pool.is_cached, digests) * bs
                    if rep.in_run:
                        bounds.append(k)
                costs.append(
                    pod.inflight_prompt_tokens + pw * max(0, inp - matched) + dw * pod.inflight_requests
                )
        pick = costs.index(min(costs))  # the lowest cost, the first one on ties
        while pick in bounds:
            bounds.remove(pick)
            pod = ready[pick]
            rep = pod.replica
            rep.sync(now)
            matched = _cached_prefix_blocks(rep.pool.is_cached, digests) * bs
            costs[pick] = pod.inflight_prompt_tokens + pw * max(0, inp - matched) + dw * pod.inflight_requests
            pick = costs.index(min(costs))
        best = ready[pick]
        best.inflight_requests += 1
        best.inflight_prompt_tokens += r.input_tokens
        best.replica.add(i, r.input_tokens, r.output_tokens, digests, now)
        self._schedule_step(best)

    def _on_token(self, replica: Replica, req: SimRequest, now: float) -> None:
        i = int(req.request_id)
        pod = self.pods[replica.rid]
        if req.num_output_tokens == 1:
            self.first[i] = now
            pod.inflight_prompt_tokens -= self.trace[i].input_tokens
            ttft = now - self.trace[i].arrival_s
            self.ttft_window.append((now, ttft))
            self.minute_ttfts.append(ttft)
        if req.finish_reason is not None:
            self.finish[i] = now
            pod.inflight_requests -= 1
            res = self.result
            res.prompt_tokens += req.num_prompt_tokens
            res.cached_tokens += max(0, req.num_cached_tokens)

    # --- observation -------------------------------------------------------------------------------------

    def _observe(self, now: float) -> Observation:
        waiting = running = 0
        kv = 0.0
        ready = 0
        current = 0
        for pod in self.pods:
            if pod.state in ("booting", "ready"):
                current += 1
            if pod.state in ("ready", "draining"):
                ready += pod.state == "ready"
                rep = pod.replica
                rep.sync(now)
                waiting += len(rep.scheduler.waiting)
                running += len(rep.scheduler.running)
                kv += rep.pool.usage()
        window = self.ttft_window
        while window and window[0][0] < now - TTFT_WINDOW_S:
            window.popleft()
        p90 = percentile([v for _, v in window], 0.9) if window else None
        return Observation(now, current, ready, waiting, running, kv, p90, self.rate_per_min)

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> FleetResult:
        policy = self.policy
        for _ in range(policy.initial(self.initial_rate)):
            self._new_pod(0.0, warm=True)
        if policy.interval_s < math.inf:
            self._push(policy.interval_s, _TICK, None)
        self._push(SAMPLE_S, _SAMPLE, None)
        trace = self.trace
        n = len(trace)
        ai = 0
        events = self.events
        last_t = 0.0
        while True:
            t_arr = trace[ai].arrival_s if ai < n else math.inf
            t_evt = events[0][0] if events else math.inf
            if t_arr == math.inf and (t_evt == math.inf or (t_evt > self.duration_s and self._idle())):
                break
            now = min(t_arr, t_evt)
            self._account(last_t, now)
            last_t = now
            self.now = now
            if t_evt <= t_arr:
                _, _, kind, obj = heapq.heappop(events)
                self._dispatch(kind, obj, now)
            else:
                self.minute_arrivals += 1
                self._route(ai, now)
                ai += 1
        self._account(last_t, max(last_t, self.duration_s))
        return self._finish()

    def _idle(self) -> bool:
        return not self.pending and all(not p.replica.has_work() for p in self.pods if p.state != "gone")

    def _dispatch(self, kind: int, obj: object, now: float) -> None:
        if kind == _STEP:
            assert isinstance(obj, tuple)
            stepping: Pod = obj[0]
            if self._versions.get(stepping.index) != obj[1]:
                return
            stepping.replica.step_end()
            self._schedule_step(stepping)
            if stepping.state == "draining" and not stepping.replica.has_work():
                self._pod_gone(stepping, now)
        elif kind == _READY:
            pod = obj
            assert isinstance(pod, Pod)
            if pod.state == "booting":
                pod.state = "ready"
                self.routable.append(pod)
                self.routable.sort(key=lambda p: p.index)
                self.n_serving += 1
                while self.pending:
                    self._route(self.pending.popleft(), now)
        elif kind == _TICK:
            desired = self.policy.decide(self._observe(now))
            self._scale_to(desired, now)
            if now < self.duration_s:
                self._push(now + self.policy.interval_s, _TICK, None)
        elif kind == _SAMPLE:
            self._sample(now)
            if now < self.duration_s:
                self._push(now + SAMPLE_S, _SAMPLE, None)
        elif kind == _NODE:
            node = obj
            assert isinstance(node, Node)
            since = node.empty_since
            if node.pods == 0 and node.terminated_s is None and since is not None:
                node.terminated_s = now if now - since >= self.spec.consolidate_after_s - 1e-9 else None

    def _sample(self, now: float) -> None:
        res = self.result
        rate = self.minute_arrivals / SAMPLE_S
        self.rate_per_min.append(rate)
        self.minute_arrivals = 0
        res.series_t.append(now)
        res.series_rate.append(rate)
        res.series_pods.append(sum(1 for p in self.pods if p.state in ("booting", "ready")))
        res.series_ready.append(sum(1 for p in self.pods if p.state == "ready"))
        res.series_ttft_p90.append(percentile(self.minute_ttfts, 0.9) if self.minute_ttfts else math.nan)
        self.minute_ttfts = []

    def _account(self, t0: float, t1: float) -> None:
        """Integrate pod counts between events, up to the end of the day."""
        t1 = min(t1, self.duration_s)
        if t1 <= t0:
            return
        res = self.result
        dt = t1 - t0
        res.pod_seconds += self.n_alive * dt
        res.ready_seconds += self.n_serving * dt
        res.peak_pods = max(res.peak_pods, self.n_alive)

    def _finish(self) -> FleetResult:
        res = self.result
        end = self.duration_s
        for node in self.nodes:
            stop = node.terminated_s if node.terminated_s is not None else end
            res.node_seconds += max(0.0, min(stop, end) - node.launched_s)
        for i, r in enumerate(self.trace):
            res.ttft_s.append(self.first[i] - r.arrival_s)
            out = r.output_tokens
            res.tpot_s.append((self.finish[i] - self.first[i]) / (out - 1) if out > 1 else 0.0)
        for pod in self.pods:
            res.busy_seconds += pod.replica.core.simulated_s
            res.steps += pod.replica.core.num_steps
            res.macro_runs += pod.replica.num_runs
        return res


def simulate(
    trace: list[TraceRequest],
    spec: FleetSpec,
    perf: EnginePerf,
    policy: Policy,
    *,
    macro: bool = True,
    duration_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> FleetResult:
    if progress is not None:
        progress(f"simulating {policy.name} over {len(trace):,} requests")
    return Fleet(trace, spec, perf, policy, macro=macro, duration_s=duration_s).run()
