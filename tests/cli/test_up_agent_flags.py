"""`eksinfer up` starts its simulated engines with the tool / reasoning flags a rendered deployment uses."""

from __future__ import annotations

from eksinfer.cli.up import agent_flags
from eksinfer.sim.config import SimOptions
from eksinfer.stack import StackOptions, sim_command


def test_default_model_gets_its_tool_parser() -> None:
    assert agent_flags(None) == ("--enable-auto-tool-choice", "--tool-call-parser", "llama3_json")
    assert SimOptions().model == "llama-3.1-8b"  # the default agent_flags assumes


def test_reasoning_family_gets_both_parsers_and_they_reach_the_command() -> None:
    flags = agent_flags("qwen3-32b")
    assert flags == (
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--reasoning-parser",
        "qwen3",
    )
    cmd = sim_command(StackOptions(model="qwen3-32b", sim_args=flags))
    assert cmd[-len(flags) :] == list(flags)


def test_unknown_family_gets_no_flags() -> None:
    assert agent_flags("some-model-nobody-knows") == ()
