"""Workload generators: reproducible by seed, the shapes each workload promises, replay parsing."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from eksinfer.bench.arrivals import send_times
from eksinfer.bench.config import BenchConfig
from eksinfer.bench.prompts import WORDS, random_text
from eksinfer.bench.runner import build_body
from eksinfer.bench.workloads import conversations
from eksinfer.errors import ConfigError
from eksinfer.tokenize import BuiltinTokenizer


def _cfg(workload: dict, seed: int = 0, **kw) -> BenchConfig:
    return BenchConfig(target="http://x", model="m", workload=workload, seed=seed, **kw)


def _take(cfg: BenchConfig, n: int) -> list:
    return list(itertools.islice(conversations(cfg), n))


@pytest.mark.parametrize(
    "workload",
    [
        {"type": "random", "input_len": 40, "range_ratio": 0.5, "prefix_len": 8},
        {"type": "shared-prefix", "num_groups": 3, "num_prompts_per_group": 4},
        {"type": "multi-turn", "num_conversations": 3, "turns": 2, "think_time_s": 0.5},
    ],
)
def test_same_seed_same_prompts_other_seed_other_prompts(workload):
    a, b, c = (_take(_cfg(workload, seed), 12) for seed in (7, 7, 8))
    assert a == b
    assert a != c


def test_prompt_length_is_exact_for_the_builtin_sim_tokenizer():
    tok = BuiltinTokenizer()
    for n in (1, 17, 256):
        text = random_text(random.Random(n), n)
        assert len(tok.encode(text, add_special_tokens=False)) == n
    assert all(1 <= len(w) <= 3 and w.isalpha() and w.islower() for w in WORDS)


def test_random_lengths_prefix_and_outputs():
    convs = _take(_cfg({"type": "random", "input_len": 100, "range_ratio": 0.2, "prefix_len": 10}), 50)
    prefixes = {tuple(c.turns[0].text.split()[:10]) for c in convs}
    assert len(prefixes) == 1  # the fixed prefix
    lengths = [len(c.turns[0].text.split()) - 10 for c in convs]
    assert all(80 <= n <= 120 for n in lengths)  # uniform in [100*0.8, 100*1.2]
    assert len(set(lengths)) > 5
    assert all(
        60 <= c.turns[0].max_tokens <= 196 for c in _take(_cfg({"type": "random", "range_ratio": 0.5}), 20)
    )


def test_shared_prefix_groups_and_lengths():
    w = {
        "type": "shared-prefix",
        "num_groups": 3,
        "num_prompts_per_group": 4,
        "system_prompt_len": 20,
        "question_len": 5,
        "output_len": 7,
    }
    convs = _take(_cfg(w), 12)
    assert sorted(c.conversation_id for c in convs) == list(range(12))
    by_group: dict[int, set[str]] = {}
    for c in convs:
        by_group.setdefault(c.group, set()).add(c.system)
        assert len(c.system.split()) == 20
        assert len(c.turns[0].text.split()) == 5
        assert c.turns[0].max_tokens == 7
    assert len(by_group) == 3
    assert all(len(s) == 1 for s in by_group.values())  # one system prompt per group
    assert len({next(iter(s)) for s in by_group.values()}) == 3
    # the workload cycles: request 13 is request 1 again
    assert _take(_cfg(w), 13)[12] == convs[0]


def test_multi_turn_context_grows_and_common_prefix_is_shared():
    w = {
        "type": "multi-turn",
        "num_conversations": 2,
        "turns": 3,
        "common_prefix_len": 6,
        "system_prompt_len": 4,
        "user_len": 5,
        "output_len": 3,
    }
    cfg = _cfg(w, endpoint="chat")
    c0, c1 = _take(cfg, 2)
    assert c0.system.split()[:6] == c1.system.split()[:6]
    assert c0.system != c1.system
    history: list[tuple[str, str]] = []
    sizes = []
    for i in range(3):
        body = build_body(cfg, c0, i, history)
        sizes.append(len(body["messages"]))
        history.append((c0.turns[i].text, "reply words"))
    assert sizes == [2, 4, 6]  # system + (user, assistant) * i + user
    text_cfg = _cfg(w)
    prompt = build_body(text_cfg, c0, 2, history[:2])["prompt"]
    assert prompt.startswith(c0.system)
    assert prompt.endswith(c0.turns[2].text)


def test_replay_formats(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": "hello there", "max_tokens": 9})
        + "\n\n"
        + json.dumps(
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
        )
        + "\n"
    )
    convs = _take(_cfg({"type": "replay", "path": str(jsonl)}, max_tokens=33), 3)
    assert [(c.system, c.turns[0].text, c.turns[0].max_tokens) for c in convs] == [
        ("", "hello there", 9),
        ("be brief", "hi", 33),
        ("", "hello there", 9),
    ]
    share = tmp_path / "sharegpt.json"
    answer = "x" * 400  # about 100 tokens at 4 characters a token
    share.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": answer}]}])
    )
    (conv,) = _take(_cfg({"type": "replay", "path": str(share)}), 1)
    assert (conv.turns[0].text, conv.turns[0].max_tokens) == ("q1", 100)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "ok"}\n{"oops"\n', r"p.jsonl:2: not valid JSON"),
        ('{"text": "no prompt"}\n', r"p.jsonl:1: needs 'prompt'"),
        (
            '{"prompt": "a", "max_tokens": -3}\n',
            r"p.jsonl:1: output_len/max_tokens must be a positive integer",
        ),
        ('[{"conversations": [{"from": "gpt", "value": "only"}]}]', r"p.jsonl\[0\]: no user/human message"),
        ("", r"no prompts in the file"),
    ],
)
def test_malformed_dataset_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        next(conversations(_cfg({"type": "replay", "path": str(path)})))


def test_missing_dataset():
    with pytest.raises(ConfigError, match="cannot read dataset"):
        next(conversations(_cfg({"type": "replay", "path": "/nonexistent/x.jsonl"})))


def test_poisson_arrivals_are_seeded_with_the_right_mean():
    a = list(itertools.islice(send_times(10.0, "poisson", 3), 4001))
    assert a == list(itertools.islice(send_times(10.0, "poisson", 3), 4001))
    assert a[0] == 0.0
    assert all(x < y for x, y in itertools.pairwise(a))
    assert a[-1] / 4000 == pytest.approx(0.1, rel=0.06)  # mean gap 1/rate; 6 % ~ 4 standard errors
    assert list(itertools.islice(send_times(4.0, "constant", 0), 3)) == [0.0, 0.25, 0.5]


def test_shared_prefix_multi_turn_groups_become_conversations():
    w = {
        "type": "shared-prefix",
        "num_groups": 2,
        "num_prompts_per_group": 3,
        "question_len": 4,
        "multi_turn": True,
    }
    c0, c1 = _take(_cfg(w), 2)
    assert (len(c0.turns), len(c1.turns)) == (3, 3)
    assert c0.system != c1.system
    assert all(len(t.text.split()) == 4 for t in c0.turns)


def test_replay_multi_turn_uses_every_user_turn(tmp_path):
    path = tmp_path / "sg.jsonl"
    conv = [
        {"from": "system", "value": "sys"},
        {"from": "human", "value": "q1"},
        {"from": "gpt", "value": "a" * 40},
        {"from": "human", "value": "q2"},
    ]
    path.write_text(json.dumps({"conversations": conv}) + "\n")
    (single,) = _take(_cfg({"type": "replay", "path": str(path)}, max_tokens=7), 1)
    (multi,) = _take(_cfg({"type": "replay", "path": str(path), "multi_turn": True}, max_tokens=7), 1)
    assert [(t.text, t.max_tokens) for t in single.turns] == [("q1", 10)]
    assert [(t.text, t.max_tokens) for t in multi.turns] == [
        ("q1", 10),
        ("q2", 7),
    ]  # no recorded answer: default
    assert multi.system == "sys"


@pytest.mark.parametrize("burstiness", [0.5, 4.0])
def test_gamma_arrivals_keep_the_mean_and_change_the_spread(burstiness):
    times = list(itertools.islice(send_times(10.0, "poisson", 1, burstiness), 8001))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert mean == pytest.approx(0.1, rel=0.08)
    assert cv == pytest.approx(burstiness**-0.5, rel=0.1)  # gamma(shape b): CV = 1 / sqrt(b)
