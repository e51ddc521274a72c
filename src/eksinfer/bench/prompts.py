"""Prompt text of a given token length without a tokenizer.

Approximation: a prompt of N tokens is N words drawn from a list of short common English words, joined by
single spaces. Each word is 1 to 3 lowercase letters, so:
  * eksinfer's built-in simulator tokenizer (sim/tokenizer.py: one token per
    ` ?[A-Za-z][a-z]{0,2}` piece) gives exactly N tokens (+1 BOS it adds itself);
  * BPE vocabularies of Llama/GPT/Qwen models hold these frequent words with their leading space as single
    tokens, so the count is N within a few percent (chat templates add their own fixed overhead).
For text read from files (replay) we use the usual English rule of thumb of about 4 characters per token
(OpenAI's tokenizer guidance), which is only an estimate for reporting and default output lengths.
"""

from __future__ import annotations

import random

# 2-3 letter words that are single tokens with a leading space in common BPE vocabularies.
_WORD_TEXT = """
    the and for are but not you all any can had her was one our out day get has him his how man new now old
    see two way who boy did its let put say she too use dad mom act add age ago aid aim air art ask bad bag
    bar bed big bit box bus buy car cat cup cut dog dry ear eat egg end eye far fat few fit fix fly fun gas
    god gun guy hat hit hot ice job key kid lab law lay leg lie lot low map mix net odd off oil own pay pen
    per pet pie pop pot raw red rid row run sad sea set sit six sky son sun tax tea ten tie tip toe top toy
    try war web wet win yes yet zoo am an as at be by do go he if in is it me my no of on or so to up us we
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())

CHARS_PER_TOKEN = 4.0  # rule of thumb for English with BPE tokenizers (see module docstring)


def random_text(rng: random.Random, num_tokens: int) -> str:
    """`num_tokens` seeded random words; two calls never share a long prefix by chance (170 words each)."""
    if num_tokens <= 0:
        return ""
    return " ".join(rng.choices(WORDS, k=num_tokens))


def estimate_tokens(text: str) -> int:
    """Rough token count of arbitrary text (about 4 characters a token); at least 1 for non-empty text."""
    if not text:
        return 0
    return max(1, round(len(text) / CHARS_PER_TOKEN))
