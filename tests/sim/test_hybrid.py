"""The hybrid pool beyond the capture: decoding past the window, the admission cap, and where it is used.

Expected counts are worked out by hand from vLLM 0.32's rules (sim/hybrid.py's docstring): block size 4 and
a window of 8 tokens, so a sliding group needs cdiv(7, 4) = 2 blocks before a hit and holds at most 3.
"""

from __future__ import annotations

import dataclasses

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.perf import build_engine_perf
from eksinfer.sim.blocks import Block, BlockPool, BlockTable
from eksinfer.sim.core import CoreConfig, EngineCore
from eksinfer.sim.hybrid import FULL, SLIDING, HybridBlockPool, group_kinds
from eksinfer.sim.scheduler import Scheduler, SimRequest, Status

BS, WINDOW = 4, 8


def _pool(blocks: int = 64, *, max_model_len: int = 256, in_flight: int = 16) -> HybridBlockPool:
    return HybridBlockPool(
        blocks,
        BS,
        kinds=group_kinds(1, 1, sliding_first=True),
        sliding_window=WINDOW,
        max_model_len=max_model_len,
        in_flight_tokens=in_flight,
        emit_events=True,
    )


def _req(rid: str, prompt: list[int], max_tokens: int) -> SimRequest:
    return SimRequest(
        rid, prompt, max_tokens=max_tokens, block_size=BS, hash_seed="0", arrival_time=0.0, ignore_eos=True
    )


def _real(pool: HybridBlockPool, blocks: list[Block]) -> int:
    return sum(1 for b in blocks if b is not pool.null)


def test_group_order_follows_layer_zero() -> None:
    assert group_kinds(1, 1, sliding_first=True) == (SLIDING, FULL)
    assert group_kinds(2, 1, sliding_first=False) == (FULL, FULL, SLIDING)


def test_decoding_past_the_window_frees_the_sliding_blocks_behind_it() -> None:
    pool = _pool()
    sched = Scheduler(pool, max_num_seqs=4, max_num_batched_tokens=16, max_model_len=256)
    req = _req("a", list(range(100, 108)), max_tokens=24)  # 8 + 24 tokens
    sched.add(req)
    usable = pool.num_gpu_blocks - 1
    while sched.has_work():
        plan = sched.schedule()
        assert req.table.groups is not None
        sliding, full = req.table.groups
        tokens = req.num_computed_tokens + plan.scheduled[0][1]
        # the full group holds every block; the sliding group the window before the step and the step's own
        assert len(full) == len(sliding) == -(-tokens // BS)
        skipped = max(0, req.num_computed_tokens - WINDOW + 1) // BS
        assert _real(pool, sliding) == len(sliding) - skipped
        assert pool.num_free_blocks == usable - len(full) - _real(pool, sliding)
        sched.update(plan, lambda r: 7)
    assert req.status is Status.FINISHED
    assert pool.num_free_blocks == usable


def test_admission_reserves_at_most_the_window_and_the_in_flight_tokens_in_a_sliding_group() -> None:
    # A 96-token prompt needs 24 full blocks; its sliding group at most cdiv(min(7 + 16, 256), 4) + 1 = 7.
    prompt = list(range(1000, 1096))
    pool = _pool(32)  # 31 usable: 24 + 7 fit, 24 + 24 would not
    assert pool.blocks_to_allocate(BlockTable(), len(prompt), [], admission=True) == 31
    sched = Scheduler(pool, max_num_seqs=4, max_num_batched_tokens=16, max_model_len=256)
    req = _req("long", prompt, max_tokens=1)
    sched.add(req)
    sched.update(sched.schedule(), lambda r: 7)
    assert req.status is Status.RUNNING  # admitted, prefilling in 16-token chunks
    steps = 1
    while sched.has_work():
        sched.update(sched.schedule(), lambda r: 7)
        steps += 1
    assert req.status is Status.FINISHED
    assert steps == 96 // 16


def test_a_shared_prefix_hits_only_once_its_junction_is_cached() -> None:
    # vLLM 0.32 caches a sliding group's blocks only at the replay boundary and at a junction a hit marked:
    # the first sibling of a prompt recomputes the shared part, the second reuses it.
    pool = _pool()
    sched = Scheduler(pool, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256)
    base = list(range(100, 124))  # 6 blocks
    hits = []
    for i, prompt in enumerate(
        (base, base[:16] + [900 + i for i in range(8)], base[:16] + list(range(1, 9)))
    ):
        req = _req(str(i), prompt, max_tokens=1)
        sched.add(req)
        while sched.has_work():
            sched.update(sched.schedule(), lambda r: 7)
        hits.append(req.num_cached_tokens)
    assert hits == [0, 0, 16]


def test_the_engine_core_runs_gpt_oss_on_the_hybrid_pool() -> None:
    def core(model: str) -> EngineCore:
        perf = build_engine_perf(get_model(model), get_gpu("H100"), tensor_parallel_size=2)
        cfg = CoreConfig(
            num_gpu_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=2048
        )
        return EngineCore(cfg, perf=perf, sample_space=range(100, 200), clock=lambda: 0.0)

    hybrid = core("gpt-oss-120b").pool
    assert isinstance(hybrid, HybridBlockPool)
    assert hybrid.kinds == (SLIDING, FULL)  # gpt-oss's layer 0 slides: vLLM numbered that group 0
    assert hybrid.window == 128
    plain = core("llama-3.1-8b").pool
    assert type(plain) is BlockPool


@pytest.mark.parametrize("macro", [True, False])
def test_the_fleet_steps_a_hybrid_replica_one_step_at_a_time(macro: bool) -> None:
    from eksinfer.autoscale.replica import Replica

    perf = build_engine_perf(get_model("gpt-oss-120b"), get_gpu("H100"), tensor_parallel_size=2)
    cfg = CoreConfig(
        num_gpu_blocks=512, block_size=16, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=2048
    )
    replica = Replica(0, cfg, perf, macro=macro)
    assert replica.macro is False  # its macro-runs would grow one KV-cache group


def test_a_hybrid_engine_refuses_a_context_its_groups_cannot_hold() -> None:
    # vLLM refuses to start when one max-length sequence cannot fit: for gpt-oss every sliding group adds its
    # window and the tokens in flight to the full groups' blocks (the capture's 64-block pool: 992 of 2,048).
    from eksinfer.errors import UsageError
    from eksinfer.sim.config import SimOptions, build_perf, resolve_engine_sizing

    options = SimOptions(model="gpt-oss-120b", gpu="H100", tensor_parallel_size=2, num_gpu_blocks=64)
    perf = build_perf(options)
    sizing = resolve_engine_sizing(options, perf)
    # 63 usable blocks of 16: 31 full ones and 32 sliding ones (a sequence shorter than the window plus the
    # tokens in flight is reserved whole in the sliding group, and one block more)
    assert sizing.max_model_len == 31 * 16
    with pytest.raises(UsageError) as err:
        resolve_engine_sizing(dataclasses.replace(options, max_model_len=32 * 16), perf)
    assert err.value.field == "--max-model-len"
