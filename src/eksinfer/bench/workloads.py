"""Seeded workload generators: every workload is a stream of conversations (a single-turn prompt is a
conversation of one turn), so the runner has one code path for plain, shared-prefix and multi-turn traffic.

Generators are pure functions of (workload config, seed, max_tokens): the same inputs give the same prompts
in the same order. They cycle when a run asks for more requests than the workload defines.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from eksinfer.bench.config import (
    BenchConfig,
    MultiTurnWorkload,
    RandomWorkload,
    ReplayWorkload,
    SharedPrefixWorkload,
)
from eksinfer.bench.prompts import random_text
from eksinfer.bench.replay import read_replay


@dataclass(frozen=True, slots=True)
class Turn:
    """One user message and how many tokens to ask back."""

    text: str
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Conversation:
    """A system prompt (maybe empty) and turns sent one after another, each with the full history."""

    conversation_id: int
    system: str
    turns: tuple[Turn, ...]
    think_time_s: float = 0.0
    group: int = 0


def _uniform_len(rng: random.Random, length: int, ratio: float) -> int:
    # vLLM's random dataset: uniform integer in [len * (1 - r), len * (1 + r)], at least 1.
    lo = max(1, int(length * (1 - ratio)))
    hi = max(lo, int(length * (1 + ratio)))
    return rng.randint(lo, hi)


def _random(w: RandomWorkload, seed: int, max_tokens: int) -> Iterator[Conversation]:
    rng = random.Random(seed)
    prefix = random_text(random.Random(seed ^ 0x5EED), w.prefix_len)
    out_len = w.output_len or max_tokens
    for i in itertools.count():
        body = random_text(rng, _uniform_len(rng, w.input_len, w.range_ratio))
        text = f"{prefix} {body}" if prefix else body
        yield Conversation(i, "", (Turn(text, _uniform_len(rng, out_len, w.range_ratio)),))


def shared_prefix_conversations(w: SharedPrefixWorkload, seed: int) -> list[Conversation]:
    """groups x prompts: group g's requests all start with system prompt g (inference-perf shared_prefix).

    With `multi_turn`, each group is one conversation whose turns are its questions (inference-perf's
    enable_multi_turn_chat)."""
    rng = random.Random(seed)
    systems = [random_text(rng, w.system_prompt_len) for _ in range(w.num_groups)]
    if w.multi_turn:
        return [
            Conversation(
                g,
                systems[g],
                tuple(
                    Turn(random_text(rng, w.question_len), w.output_len)
                    for _ in range(w.num_prompts_per_group)
                ),
                group=g,
            )
            for g in range(w.num_groups)
        ]
    convs = [
        Conversation(
            g * w.num_prompts_per_group + p,
            systems[g],
            (Turn(random_text(rng, w.question_len), w.output_len),),
            group=g,
        )
        for g in range(w.num_groups)
        for p in range(w.num_prompts_per_group)
    ]
    if w.shuffle:
        rng.shuffle(convs)
    return convs


def multi_turn_conversations(w: MultiTurnWorkload, seed: int) -> list[Conversation]:
    """Conversations with a shared common prefix, their own system prompt and `turns` user messages."""
    rng = random.Random(seed)
    common = random_text(rng, w.common_prefix_len)
    convs = []
    for c in range(w.num_conversations):
        own = random_text(rng, w.system_prompt_len)
        system = " ".join(s for s in (common, own) if s)
        turns = tuple(Turn(random_text(rng, w.user_len), w.output_len) for _ in range(w.turns))
        convs.append(Conversation(c, system, turns, think_time_s=w.think_time_s, group=c))
    return convs


def conversations(config: BenchConfig) -> Iterator[Conversation]:
    """The endless, seeded stream of conversations of `config.workload` (cycling finite workloads)."""
    w = config.workload
    if isinstance(w, RandomWorkload):
        return _random(w, config.seed, config.max_tokens)
    if isinstance(w, SharedPrefixWorkload):
        return itertools.cycle(shared_prefix_conversations(w, config.seed))
    if isinstance(w, MultiTurnWorkload):
        return itertools.cycle(multi_turn_conversations(w, config.seed))
    assert isinstance(w, ReplayWorkload)
    return itertools.cycle(replay_conversations(w, config.max_tokens))


def replay_conversations(w: ReplayWorkload, max_tokens: int) -> list[Conversation]:
    """Conversations from a local file, in file order: first user turn only, or all with `multi_turn`."""
    convs = []
    for i, p in enumerate(read_replay(w.path, w.max_prompts)):
        turns = p.turns if w.multi_turn else p.turns[:1]
        convs.append(
            Conversation(
                i, p.system, tuple(Turn(t.text, w.output_len or t.output_len or max_tokens) for t in turns)
            )
        )
    return convs
