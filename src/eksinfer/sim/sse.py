"""Server-sent events of one streamed choice, in vLLM 0.32's chunk shapes (reference: a recorded stream).

Chat: a role chunk, one chunk per token (`delta.content`, or `delta.tool_calls` for a scripted tool-call
output, see `toolcalls`), the last carrying `finish_reason`; completions: one `text` chunk per token.
With `n > 1` every choice streams under its own `index`; the usage chunk (sum over choices, empty
`choices`) and `[DONE]` come once, after the last choice ends. Logprobs ride on each token's chunk.
The common token chunk is a pre-encoded template with one JSON string spliced in: one encode per token.
"""

from __future__ import annotations

from typing import Any

from eksinfer.sim import logprobs as lp
from eksinfer.sim import protocol as p
from eksinfer.sim.scheduler import SimRequest
from eksinfer.sim.toolcalls import ToolDeltas
from eksinfer.tokenize import Tokenizer

_MARK = "\x00eksinfer-text\x00"


def usage_sum(first: dict[str, Any], reqs: list[SimRequest]) -> dict[str, Any]:
    """`first`'s usage block with the completion tokens of every choice (vLLM counts all n)."""
    completion = sum(r.num_output_tokens for r in reqs)
    first["completion_tokens"] = completion
    first["total_tokens"] = first["prompt_tokens"] + completion
    return first


class SseChunks:
    """Renders one choice's new tokens as SSE chunks."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        params: p.GenerateParams,
        rid: str,
        created: int,
        *,
        chat: bool,
        index: int,
        reasoning_tokens: int = 0,
    ) -> None:
        self.reasoning_tokens = reasoning_tokens  # leading tokens sent as `delta.reasoning`
        self.params, self.rid, self.created, self.chat, self.index = params, rid, created, chat, index
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.obj = "chat.completion.chunk" if chat else "text_completion"
        head, tail = p.dumps(self._chunk(_MARK, None)).split(p.dumps(_MARK))
        self.head, self.tail = b"data: " + head, tail + b"\n\n"
        self.output = params.plan(index)
        calls = chat and bool(self.output.calls)
        self.tools = ToolDeltas(self.output, tokenizer.decode) if calls else None
        self.key = lp.request_key(params.prompt_ids, params.seed, index)
        self.text_offset = 0

    def _chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        build = p.chat_chunk if self.chat else p.completion_chunk
        chunk = build(self.rid, self.created, self.params.model, text, finish)
        chunk["choices"][0]["index"] = self.index
        return chunk

    def _tool_chunks(self, req: SimRequest, i: int, last: bool) -> list[dict[str, Any]]:
        """The chunks of token i of a scripted tool-call output (`toolcalls`): one per delta, then an
        empty-delta terminal chunk after the last token."""
        assert self.tools is not None
        chunks = []
        for delta in self.tools.advance([t for t in req.output_ids[: i + 1] if t != self.eos]):
            chunk = self._chunk("", None)
            chunk["choices"][0]["delta"] = {"content": None, "tool_calls": [delta]}
            chunks.append(chunk)
        if last:
            forced = self.output.mode in ("required", "auto") and self.tools.any_streamed
            chunk = self._chunk(
                "", "tool_calls" if forced and req.finish_reason == "stop" else req.finish_reason
            )
            chunk["choices"][0]["delta"] = {}
            chunks.append(chunk)
        return chunks

    def _logprobs(self, token_id: int, position: int, text: str) -> dict[str, Any]:
        k = self.params.logprobs or 0
        if self.chat:
            return {"content": lp.chat_content(self.tokenizer, self.key, [token_id], position, k)}
        block = lp.completion_block(self.tokenizer, self.key, [token_id], position, k, self.text_offset)
        self.text_offset += len(text)
        return block

    def render(self, req: SimRequest, sent: int, *, stamp: bool = True) -> list[bytes]:
        """Chunks for tokens `sent`.. of `req`; `stamp`: fingerprint the terminal chunk when no usage
        chunk follows (vLLM does for a single choice)."""
        params, out = self.params, req.output_ids
        finished = req.finish_reason is not None
        parts: list[bytes] = []
        if self.chat and sent == 0 and out:
            role = p.chat_role_chunk(self.rid, self.created, params.model)
            role["choices"][0]["index"] = self.index
            parts.append(b"data: " + p.dumps(role) + b"\n\n")
        for i in range(sent, len(out)):
            last = finished and i == len(out) - 1
            if self.tools is not None:
                chunks = self._tool_chunks(req, i, last)
                done = (
                    chunks if not last else chunks[:-1]
                )  # the terminal chunk gets usage / fingerprint below
                parts += [b"data: " + p.dumps(c) + b"\n\n" for c in done]
                if not last:
                    continue
                chunk = chunks[-1]
            else:
                text = "" if out[i] == self.eos else self.tokenizer.decode([out[i]])
                thinking = i < self.reasoning_tokens
                if thinking and not params.include_reasoning and not last:
                    continue  # include_reasoning: false: vLLM sends no reasoning deltas
                hidden = not params.include_reasoning and self.reasoning_tokens > 0
                quiet = not thinking and not hidden
                plain = params.logprobs is None and not params.continuous_usage and quiet
                if not last and plain:
                    parts.append(self.head + p.dumps(text) + self.tail)  # the hot path: one encode per token
                    continue
                chunk = self._chunk(text, req.finish_reason if last else None)
                if thinking:
                    chunk["choices"][0]["delta"] = {"reasoning": text} if params.include_reasoning else {}
                elif hidden:  # vLLM 0.32 (captured): content deltas say "reasoning": null when it is hidden
                    chunk["choices"][0]["delta"]["reasoning"] = None
                if params.logprobs is not None and (params.include_reasoning or not self.reasoning_tokens):
                    chunk["choices"][0]["logprobs"] = self._logprobs(out[i], i, text)
            if params.continuous_usage:
                chunk["usage"] = p.usage(req.num_prompt_tokens, i + 1, None, stream=True)
            if last and stamp and not params.include_usage:
                chunk["system_fingerprint"] = p.SYSTEM_FINGERPRINT
            parts.append(b"data: " + p.dumps(chunk) + b"\n\n")
        return parts

    def end(self, use: dict[str, Any]) -> list[bytes]:
        """The usage chunk (when asked for) and `[DONE]`, once per response."""
        parts = []
        if self.params.include_usage:
            chunk = p.usage_chunk(self.rid, self.obj, self.created, self.params.model, use)
            parts.append(b"data: " + p.dumps(chunk) + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        return parts
