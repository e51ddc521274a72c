"""The built-in deterministic tokenizer of the simulator, which the gateway's `builtin` mode shares so that it
tokenizes exactly as a simulated engine does (`encode_prompt`, `encode_chat`).

Built-in tokenizer ("eksinfer-builtin-v1"; stable: changing it means a new name). 73,371 ids:

    0 <unk>, 1 <s> (BOS), 2 </s> (EOS)
    3 .. 258        one UTF-8 byte each (id = 3 + byte)
    259 .. 73,370   word pieces: an optional leading space, one ASCII letter (either case), then 0-2
                    lowercase letters; id = 259 + (space*2 + upper) * 18,278 + offset[len] + base-26 value
                    of the lowercase letters; offset = 0 / 26 / 702 for 1 / 2 / 3 letters
                    (18,278 = 26 + 26^2 + 26^3)

Encoding scans left to right taking a word piece (regex ` ?[A-Za-z][a-z]{0,2}`) else one character as
its UTF-8 bytes, so `decode(encode(t)) == t` for every string; English runs about 3.5 characters a token.
Prompts get BOS prepended (`add_special_tokens=True`, as vLLM does for completions).

Built-in chat template: `<|{role}|>\\n{content}\\n` per message, then `<|assistant|>\\n` for the
generation prompt; list content keeps its text parts joined by newlines. Chat prompts get BOS too.
A newline is always a token of its own, so each message encodes independently of its neighbours: chats
are encoded message by message through a cache bounded in bytes (`MESSAGE_CACHE_BYTES`, 32 MiB), which
makes a repeated system prompt (the gateway tokenizes every request) cost a dictionary lookup instead of a
scan.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Unpack

from eksinfer.errors import UsageError
from eksinfer.tokenize.chat import ChatOptions, Message, message_text

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_BYTE_BASE = 3
_WORD_BASE = _BYTE_BASE + 256
_PER_CLASS = 26 + 26**2 + 26**3  # 18,278 lowercase tails of length 0..2 after the first letter
_LEN_OFFSET = (0, 26, 26 + 26**2)
BUILTIN_VOCAB_SIZE = _WORD_BASE + 4 * _PER_CLASS  # 73,371
_PIECE = re.compile(r" ?[A-Za-z][a-z]{0,2}|[\s\S]")
_A = ord("a")
# The message cache is bounded in bytes, not entries: 4,096 entries of 400 KB chats were 1.6 GB. An entry
# costs its text (1 byte a character for ASCII, up to 4) plus its ids (4 bytes each, in an array); a system
# prompt of 8k characters is ~18 KB, so 32 MiB keeps well over a thousand distinct ones. A message over 2 MiB
# (or a quarter of a smaller budget) is never cached: it would evict the rest for a prompt unlikely to repeat.
MESSAGE_CACHE_BYTES = 32 * 1024**2
_LARGEST_CACHED_MESSAGE_BYTES = 2 * 1024**2
_PIECE_CACHE_SIZE = 200_000  # pieces are 1-4 characters: a few hundred bytes each at most, ~20 MB in all


def _piece_id(piece: str) -> int:
    space = 1 if piece[0] == " " else 0
    word = piece[space:]
    upper = 1 if word[0].isupper() else 0
    value = 0
    for ch in word.lower():
        value = value * 26 + (ord(ch) - _A)
    return _WORD_BASE + (space * 2 + upper) * _PER_CLASS + _LEN_OFFSET[len(word) - 1] + value


@functools.cache
def _piece_text(token_id: int) -> str:
    index = token_id - _WORD_BASE
    cls, rest = divmod(index, _PER_CLASS)
    space, upper = divmod(cls, 2)
    length = 3 if rest >= _LEN_OFFSET[2] else 2 if rest >= _LEN_OFFSET[1] else 1
    value = rest - _LEN_OFFSET[length - 1]
    letters = []
    for _ in range(length):
        value, digit = divmod(value, 26)
        letters.append(chr(_A + digit))
    word = "".join(reversed(letters))
    if upper:
        word = word[0].upper() + word[1:]
    return (" " if space else "") + word


class BuiltinTokenizer:
    """The documented deterministic tokenizer (see the module docstring); no files, no downloads."""

    name = "eksinfer-builtin-v1"
    vocab_size = BUILTIN_VOCAB_SIZE
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def __init__(self, message_cache_bytes: int = MESSAGE_CACHE_BYTES) -> None:
        self._cache: dict[str, tuple[int, ...]] = {}
        self._messages = _MessageCache(message_cache_bytes)
        self._generation_prompt = self.encode("<|assistant|>\n", add_special_tokens=False)

    def _ids(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is None:
            if len(piece) > 1 or (piece.isascii() and piece.isalpha()):
                ids = (_piece_id(piece),)
            else:
                ids = tuple(_BYTE_BASE + b for b in piece.encode("utf-8"))
            if len(self._cache) < _PIECE_CACHE_SIZE:
                self._cache[piece] = ids
        return ids

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        out = [BOS_ID] if add_special_tokens else []
        get = self._ids
        for piece in _PIECE.findall(text):
            out.extend(get(piece))
        return out

    def decode(self, token_ids: Sequence[int]) -> str:
        chunks: list[str] = []
        pending = bytearray()
        for tid in token_ids:
            if _BYTE_BASE <= tid < _WORD_BASE:
                pending.append(tid - _BYTE_BASE)
                continue
            if pending:
                chunks.append(pending.decode("utf-8", "replace"))
                pending.clear()
            if _WORD_BASE <= tid < BUILTIN_VOCAB_SIZE:
                chunks.append(_piece_text(tid))
            # specials (and out-of-range ids) decode to nothing, as skip_special_tokens=True does
        if pending:
            chunks.append(pending.decode("utf-8", "replace"))
        return "".join(chunks)

    def apply_chat_template(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> str:
        """The built-in format has no tool or template-option section: `tools` and `extra` change nothing."""
        parts = []
        for message in messages:
            role = message.get("role") if isinstance(message, Mapping) else None
            if not isinstance(role, str):
                raise UsageError("every message needs a string 'role'", field="messages")
            parts.append(f"<|{role}|>\n{message_text(message.get('content'))}\n")
        if options.get("add_generation_prompt", True):
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.encode(prompt, add_special_tokens=True)

    def encode_chat(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> list[int]:
        """`encode(apply_chat_template(messages))`, one cached message at a time (module docstring). The
        generation prompt is always added, as the simulator always did; `tools` and `extra` change nothing."""
        out = [BOS_ID]
        for message in messages:
            role = message.get("role") if isinstance(message, Mapping) else None
            if not isinstance(role, str):
                raise UsageError("every message needs a string 'role'", field="messages")
            key = (role, message_text(message.get("content")))
            cached = self._messages.get(key)
            if cached is None:
                ids = self.encode(f"<|{role}|>\n{key[1]}\n", add_special_tokens=False)
                self._messages.put(key, ids)
                out.extend(ids)
            else:
                out.extend(cached)
        out.extend(self._generation_prompt)
        return out

    def word_ids(self) -> range:
        """Ids of the word pieces with a leading space and lowercase letters (what generation samples)."""
        start = _WORD_BASE + 2 * _PER_CLASS + _LEN_OFFSET[1]
        return range(start, start + 26**2 + 26**3)


class _MessageCache:
    """Least-recently-used (role, content) -> ids, bounded in bytes (`MESSAGE_CACHE_BYTES`); thread-safe,
    since the simulator tokenizes large bodies in worker threads. Ids are kept as 4-byte arrays: a list of
    Python ints costs about 36 bytes an id (the int objects plus the pointers), an array exactly 4."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], tuple[array[int], int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> array[int] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[str, str], ids: list[int]) -> None:
        # the two strings (exact: getsizeof), the ids, the key tuple and the dict slot
        size = sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + 4 * len(ids) + 200
        if size > min(self.max_bytes // 4, _LARGEST_CACHED_MESSAGE_BYTES):
            return
        packed = array("i", ids)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (packed, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
