"""`structured_outputs` regex and grammar, n > 1 and best_of, through the `openai` SDK, with vLLM 0.32's
captured error bodies (tests/sim/data/vllm-0.32-leftovers.json) compared field for field."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from eksinfer.sim import grammar
from tests.sim.conftest import Sdk, StartCluster

REAL: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "vllm-0.32-leftovers.json").read_text())
GEN = REAL["generate"]
MODEL = "llama-3.1-8b"
ASK = [{"role": "user", "content": "Give me a code."}]
LARK = 'start: "a" NUM\nNUM: /[0-9]+/'
EXPR = 'root ::= term (("+" | "-") term)*\nterm ::= [0-9]+'


@pytest.mark.parametrize("pattern", [r"[a-z]{3}-[0-9]{2}", r"\w+@\w+\.com", r"(yes|no)", r"\d{3}-\d{4}"])
async def test_regex_output_matches_the_regex(start: StartCluster, client: Sdk, pattern: str) -> None:
    sdk = client((await start()).urls[0])
    out = await sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=64,
        n=3,
        seed=1,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    texts = [c.message.content or "" for c in out.choices]
    assert all(re.fullmatch(pattern, t) for t in texts), texts
    assert all(c.finish_reason == "stop" for c in out.choices)
    again = await sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=64,
        n=3,
        seed=1,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    assert [c.message.content for c in again.choices] == texts  # deterministic per seed and choice


async def test_choices_of_one_request_differ(start: StartCluster, client: Sdk) -> None:
    sdk = client((await start()).urls[0])
    out = await sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=64,
        n=4,
        extra_body={"structured_outputs": {"regex": r"[a-z]{8}"}},
    )
    assert len({c.message.content for c in out.choices}) > 1  # each choice draws its own text


@pytest.mark.parametrize("spec", [LARK, EXPR, 'root ::= "yes" | "no"'])
async def test_grammar_output_is_in_the_language(start: StartCluster, client: Sdk, spec: str) -> None:
    sdk = client((await start()).urls[0])
    out = await sdk.completions.create(
        model=MODEL,
        prompt="Answer:",
        max_tokens=64,
        n=2,
        extra_body={"structured_outputs": {"grammar": spec}},
    )
    compiled = grammar.compile_spec("grammar", spec)
    assert all(grammar.matches(compiled, c.text) for c in out.choices), [c.text for c in out.choices]
    assert not grammar.matches(compiled, "definitely not" + out.choices[0].text)  # the check can fail


@pytest.mark.parametrize(
    "case", ["so_regex_bad", "so_grammar_bad2", "so_grammar_empty", "so_two_kinds", "so_none",
             "so_structural_tag_bad"],
)  # fmt: skip
async def test_bad_specifications_get_vllms_400(start: StartCluster, client: Sdk, case: str) -> None:
    sdk = client((await start()).urls[0])
    body = GEN[case]["request"]["body"]
    with pytest.raises(openai.BadRequestError) as err:
        await sdk.chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=8,
            extra_body={"structured_outputs": body["structured_outputs"]},
        )
    assert err.value.body == GEN[case]["body"]["error"]


async def test_removed_guided_fields_are_ignored_as_in_vllm(start: StartCluster) -> None:
    """vLLM 0.32 logs and ignores guided_regex / guided_grammar: free text, even for a broken grammar."""
    cluster = await start()
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.post(
            cluster.urls[0] + "/v1/completions",
            json={**GEN["guided_grammar_bad_ignored"]["request"]["body"], "model": MODEL},
        )
    assert got.status_code == GEN["guided_grammar_bad_ignored"]["status"] == 200
    assert got.json()["choices"][0]["finish_reason"] == "length"


def test_generation_is_seeded_and_never_leaves_the_language() -> None:
    compiled = grammar.compile_spec("regex", r"[A-Z][a-z]+ [0-9]{1,3}")
    seen = {grammar.generate(compiled, random.Random(seed)) for seed in range(40)}
    assert all(re.fullmatch(r"[A-Z][a-z]+ [0-9]{1,3}", s) for s in seen)
    assert len(seen) > 20
    assert grammar.generate(compiled, random.Random(3)) == grammar.generate(compiled, random.Random(3))


async def test_best_of_is_accepted_and_ignored_as_vllm_0_32(start: StartCluster, client: Sdk) -> None:
    """vLLM 0.32's completion request has no best_of (V1 dropped it): the field is ignored, n choices come
    back (captured: best_of=3 gives 1 choice, best_of=2 with n=3 gives 3, streaming too)."""
    sdk = client((await start()).urls[0])
    one = await sdk.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, best_of=3, seed=1)
    three = await sdk.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, n=3, best_of=2)
    assert len(one.choices) == len(GEN["completions_best_of"]["body"]["choices"]) == 1
    assert len(three.choices) == len(GEN["completions_best_of_lt_n"]["body"]["choices"]) == 3
    stream = await sdk.completions.create(
        model=MODEL, prompt="Hello there", max_tokens=2, best_of=2, stream=True
    )
    assert [c.choices[0].index async for c in stream if c.choices] == [0, 0]


async def test_n_choices_differ_and_repeat_with_the_seed(start: StartCluster, client: Sdk) -> None:
    """As captured from vLLM 0.32: with a seed, n=3 gives three different texts, and the same three again."""
    real = [c["text"] for c in GEN["completions_n3_seed"]["body"]["choices"]]
    assert len(set(real)) == 3
    assert real == [c["text"] for c in GEN["completions_n3_seed_again"]["body"]["choices"]]
    sdk = client((await start()).urls[0])
    runs = [
        await sdk.completions.create(
            model=MODEL, prompt="Hello there", max_tokens=6, n=3, seed=7, extra_body={"ignore_eos": True}
        )
        for _ in range(2)
    ]
    first, again = runs
    texts = [c.text for c in first.choices]
    assert len(set(texts)) == 3
    assert [c.text for c in again.choices] == texts
    assert first.usage is not None
    assert first.usage.completion_tokens == 18
