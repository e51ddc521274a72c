"""Traces: JSONL and Azure CSV parsing, one-line errors naming the field, seeded generators."""

from __future__ import annotations

from pathlib import Path

import pytest

from eksinfer.autoscale.trace import (
    TraceRequest,
    TraceShape,
    bursty_trace,
    diurnal_trace,
    load_trace,
    rate_series,
    write_trace,
)
from eksinfer.errors import ConfigError


def test_jsonl_with_prefix_groups_is_sorted_by_arrival(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"arrival_s": 2.5, "input_tokens": 100, "output_tokens": 20, "prefix_group": 3, '
        '"prefix_tokens": 64}\n'
        "\n"
        '{"timestamp": 1, "input_tokens": 50, "output_tokens": 5, "prefix_group": 1}\n'
        '{"arrival_s": 0, "input_tokens": 7, "output_tokens": 1}\n'
    )
    assert load_trace(path) == [
        TraceRequest(0.0, 7, 1),
        TraceRequest(1.0, 50, 5, 1, 25),  # prefix_tokens defaults to half the prompt
        TraceRequest(2.5, 100, 20, 3, 64),
    ]


def test_azure_csv_arrivals_are_relative_to_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:46.6805900,879,12\n"
    )
    trace = load_trace(path)
    assert [(round(r.arrival_s, 6), r.input_tokens, r.output_tokens) for r in trace] == [
        (0.0, 374, 44),
        (4.314579, 396, 109),
        (60.0, 879, 12),
    ]
    assert all(r.prefix_group == -1 for r in trace)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('{"arrival_s": 1, "output_tokens": 3}\n', "input_tokens", "line 1"),
        (
            '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 1}\n{"arrival_s": -1, "input_tokens": 5, '
            '"output_tokens": 1}\n',
            "arrival_s",
            "line 2",
        ),
        ('{"arrival_s": "soon", "input_tokens": 5, "output_tokens": 1}\n', "arrival_s", "number"),
        ('{"arrival_s": 0, "input_tokens": 5.5, "output_tokens": 1}\n', "input_tokens", "integer"),
        ('{"arrival_s": 0, "input_tokens": 5, "output_tokens": 0}\n', "output_tokens", ">= 1"),
        (
            '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 1, "prefix_group": 1, '
            '"prefix_tokens": 9}\n',
            "prefix_tokens",
            "> input_tokens",
        ),
        (
            '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 1, "prefix_group": "a"}\n',
            "prefix_group",
            "integer",
        ),
        ('{"arrival_s": 0, "input_tokens": 5\n', "line", "not JSON"),
        ("[1, 2]\n", "line", "object"),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n", "header", "GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,3,4\n", "TIMESTAMP", "line 2"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,x\n", "GeneratedTokens", "integer"),
        ("", "--trace", "no requests"),
    ],
)
def test_bad_traces_name_the_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_trace(path)
    assert err.value.field == field
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_trace(tmp_path / "absent.jsonl")
    assert err.value.field == "--trace"


def test_generators_are_seeded_and_shaped(tmp_path: Path) -> None:
    shape = TraceShape(seed=3)
    day = diurnal_trace(0.5, shape, amplitude=0.6, peak_hour=14)
    assert day == diurnal_trace(0.5, shape, amplitude=0.6, peak_hour=14)
    hourly = rate_series(day, 3600.0, 86_400.0)
    # rate 0.5 x (1 +- 0.6): about 2,880 arrivals in the peak hour, 720 in the trough hour
    assert hourly[14] > 2.5 * hourly[2]
    assert 0.9 < len(day) / (0.5 * 86_400) < 1.1
    assert any(r.prefix_group >= 0 for r in day)
    assert all(r.input_tokens + r.output_tokens <= shape.max_tokens for r in day)
    bursty = bursty_trace(0.2, shape, burst_factor=5.0)
    minutes = rate_series(bursty, 60.0, 86_400.0)
    assert max(minutes) > 3 * 0.2  # bursts are there
    path = tmp_path / "day.jsonl"
    write_trace(day[:50], path)
    assert load_trace(path) == [
        TraceRequest(round(r.arrival_s, 6), r.input_tokens, r.output_tokens, r.prefix_group, r.prefix_tokens)
        for r in day[:50]
    ]
