"""`EventGuard` on its own: vLLM's in-band error event found in relayed SSE bytes however the reads split
them, and nothing else mistaken for one; `SentText` refusing to continue an answer that already ended."""

from __future__ import annotations

import json

import pytest

from eksinfer.gateway.resilience.stream import EngineError, EventGuard, SentText, continuation_body


def token(text: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    chunk["choices"][0]["finish_reason"] = finish  # type: ignore[index]
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


# vLLM writes its error with json.dumps (spaces); the simulator with msgspec (none): both are found.
VLLM_ERROR = (
    b'data: {"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
)
COMPACT_ERROR = b'data: {"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_healthy_chunks_pass_unchanged() -> None:
    guard = EventGuard()
    stream = token(" a") + token(" b")
    assert guard.feed(stream) == stream
    assert guard.feed(DONE) == DONE
    assert guard.error is None
    assert guard.flush() == b""


@pytest.mark.parametrize("cut", [1, 7, 20, 60, len(VLLM_ERROR) - 1])
def test_an_error_event_is_found_wherever_the_reads_split_it(cut: int) -> None:
    guard = EventGuard()
    data = token(" a") + VLLM_ERROR + DONE
    at = len(token(" a")) + cut
    relayed = guard.feed(data[:at]) + guard.feed(data[at:])
    assert relayed == token(" a")  # the content before it, never a piece of the error
    assert guard.error is not None
    assert guard.error.event == VLLM_ERROR
    assert (guard.error.status, guard.error.message, guard.error.terminal) == (500, "boom", False)
    assert guard.feed(token(" c")) == b""  # nothing after it


def test_a_4xx_event_is_terminal_and_odd_codes_are_the_engines_failure() -> None:
    guard = EventGuard()
    assert guard.feed(COMPACT_ERROR) == b""
    assert guard.error is not None
    assert guard.error.terminal
    assert guard.error.payload == COMPACT_ERROR[6:-2]
    odd = EngineError.parse(b'data: {"error": {"message": "x", "code": "engine_dead"}}\n\n')
    assert (odd.status, odd.terminal) == (502, False)
    garbled = EngineError.parse(b'data: {"error": not json}\n\n')
    assert (garbled.status, garbled.message) == (502, "the engine sent an error event")


def test_the_words_error_in_content_are_not_an_error_event() -> None:
    guard = EventGuard()
    text = token('{"error": "in the text"}')  # escaped inside the JSON string: \"error\"
    assert guard.feed(text) == text
    assert guard.error is None


def test_a_stream_ending_without_a_final_blank_line_is_flushed() -> None:
    guard = EventGuard()
    assert guard.feed(token(" a") + b"data: [DO") == token(" a")
    assert guard.feed(b"NE]") == b""
    assert guard.flush() == b"data: [DONE]"


def test_an_answer_that_ended_is_not_continued() -> None:
    sent = SentText()
    sent.feed(token(" a") + token(" b", finish="stop"))
    assert not sent.continuable
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 50}
    assert continuation_body(body, True, sent, engine_options=True) is None
