"""Text that matches a `structured_outputs` regex or grammar, drawn by a seeded walk of the grammar.

vLLM 0.32 checks these constraints with xgrammar and, in its default `auto` mode, falls back to llguidance
(its `guidance` backend) for what xgrammar refuses; the errors a client sees for a broken regex or grammar
are llguidance's, wrapped by vLLM as "Grammar error: ..." / "Invalid grammar specification: ...". The
simulator uses llguidance itself (the version range vLLM 0.32 requires), so it accepts and refuses the same
specifications with the same messages (a grammar is GBNF/EBNF, converted to Lark by llguidance, or Lark).

Generation walks llguidance's token mask over a byte-level vocabulary (256 bytes + end): at each step it
picks one allowed byte (printable ASCII first, so `\\w` or `.` give readable text), and ends as soon as the
grammar allows it with a chance that grows with the length, so the text is short and always in the
language. The simulator then scripts the engine to emit that text's tokens, as guided decoding would.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import llguidance

Kind = Literal["regex", "grammar"]
_END = 256
_PRINTABLE = frozenset(range(0x20, 0x7F))
_WORDISH = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ")
MAX_CHARS = 4096  # a walk that has not ended by then gives up (the request's max_tokens cuts it anyway)


class GrammarError(ValueError):
    """A specification vLLM refuses; the message is vLLM's."""


class _ByteVocab:
    """The vocabulary llguidance walks: one token per byte, and an end token."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [b""]
        self.eos_token_id = _END
        self.bos_token_id = None
        self.special_token_ids = [_END]

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode())


@lru_cache(maxsize=1)
def _tokenizer() -> llguidance.LLTokenizer:
    import llguidance

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteVocab()), slices=[])


def compile_spec(kind: Kind, spec: str) -> str:
    """The llguidance grammar of a regex or grammar, or `GrammarError` with vLLM's message."""
    import llguidance

    if kind == "grammar" and not spec.strip():
        raise GrammarError("structured_outputs.grammar cannot be an empty string")
    if kind == "regex" and "\x00" in spec:
        raise GrammarError("structured_outputs.regex must not contain a NUL character ('\\x00')")
    try:
        compiled = llguidance.grammar_from(kind, spec)  # "grammar": GBNF converted to Lark, Lark kept
    except (ValueError, KeyError, TypeError) as err:
        raise GrammarError(f"Invalid grammar specification: {err}") from None
    error = llguidance.LLMatcher.validate_grammar(compiled, _tokenizer())
    if error:
        raise GrammarError(f"Grammar error: {error.rstrip()}")
    return compiled


_BITS = [tuple(bit for bit in range(8) if value >> bit & 1) for value in range(256)]  # byte -> its set bits


def _allowed(mask: bytes) -> list[int]:
    """The token ids a bitmask allows (little-endian bits, as llguidance writes them)."""
    return [8 * i + bit for i, value in enumerate(mask[: (_END >> 3) + 1]) if value for bit in _BITS[value]]


def generate(compiled: str, rng: random.Random, *, limit: int = MAX_CHARS) -> str:
    """A string of the grammar's language (the shortest walk the dice allow), at most `limit` bytes."""
    import llguidance

    matcher = llguidance.LLMatcher(_tokenizer(), compiled, log_level=0)
    out = bytearray()
    while len(out) < limit:
        allowed = _allowed(matcher.compute_bitmask())
        can_end = _END in allowed
        choices = [b for b in allowed if b != _END]
        if not choices or (can_end and rng.random() < 0.3 + 0.05 * len(out)):
            break
        choices = [b for b in choices if b in _PRINTABLE] or choices
        rare = [b for b in choices if b not in _WORDISH]
        if len(choices) > 8 and rare and rng.random() < min(0.9, 0.1 * len(out)):
            choices = rare  # a long run of a class: move on to the literal that closes it
        byte = rng.choice(choices)
        if not matcher.consume_token(byte):  # cannot happen for an allowed byte; stop rather than loop
            break
        out.append(byte)
    return out.decode("utf-8", errors="replace")


def matches(compiled: str, text: str) -> bool:
    """Whether `text` is a complete sentence of the grammar (for tests and checks)."""
    import llguidance

    matcher = llguidance.LLMatcher(_tokenizer(), compiled, log_level=0)
    data: Any = list(text.encode())
    return bool(matcher.consume_tokens(data)) and matcher.is_accepting()
