"""Chat templates rendered as transformers renders them, so the gateway and the engine agree on the prompt.

vLLM renders a chat with transformers' `apply_chat_template`; a prompt rendered any other way tokenizes to
other ids, and the gateway's prefix keys then miss the blocks the engine caches. The environment here is
configured as transformers 4.4x-5.x configures its own (`transformers/utils/chat_template_utils.py`,
`_compile_jinja_template`): a sandboxed, immutable jinja2 environment with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension (`{% break %}`, `{% continue %}`), a `{% generation %}` block
that renders its body, the `tojson` filter as `json.dumps(ensure_ascii=False)` with its `indent`,
`separators` and `sort_keys` arguments, and the globals `raise_exception` and `strftime_now`.

Content given as a list of parts is handled as vLLM handles it before it calls transformers
(`--chat-template-content-format auto`, vLLM >= 0.6.4, `vllm/entrypoints/chat_utils.py`): a template that
loops over a message's content (the "openai" format) gets the list as the client sent it; any other
template (the "string" format) gets the text parts joined by newlines. `content_format` decides this by
reading the template's syntax tree for a `for` loop over `...content` (directly, or through a variable set
from it).

`message_text` is the one way eksinfer flattens a message's content to text: for string-format templates,
the built-in tokenizer's own template and the gateway's approximate (character) index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict, Unpack

from eksinfer.errors import UsageError

Message = Mapping[str, Any]


class ChatOptions(TypedDict, total=False):
    """What a chat request hands its template besides the messages, as transformers' `apply_chat_template`
    takes them: `add_generation_prompt` (default True), `tools`, `documents`, and `extra`, the request's
    `chat_template_kwargs`."""

    add_generation_prompt: bool
    tools: Sequence[Any] | None
    documents: Sequence[Any] | None
    extra: Mapping[str, Any] | None


# The special tokens transformers passes to every template (its `special_tokens_map`), when configured.
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def message_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of an OpenAI content list joined by
    newlines (image and audio parts carry no text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        return "\n".join(str(p) for p in parts)
    raise UsageError("message content must be a string or a list of parts", field="messages")


def select_template(source: Any) -> str | None:
    """`chat_template` from tokenizer_config.json: a string, or a list of named templates (take
    "default", as transformers does when no name is asked for)."""
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
        source = named.get("default")
    return source if isinstance(source, str) and source else None


def special_token_text(value: Any) -> str | None:
    """tokenizer_config.json stores a special token as a string or as an AddedToken object
    ({"content": ...})."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


ContentFormat = Literal["string", "openai"]


def content_format(source: str) -> ContentFormat:
    """ "openai" when the template loops over a message's content, else "string" (module docstring)."""
    from jinja2 import nodes

    tree = _environment().parse(source)
    from_content = {
        target.name
        for assign in tree.find_all(nodes.Assign)
        if isinstance(target := assign.target, nodes.Name) and _reads_content(assign.node)
    }
    for loop in tree.find_all(nodes.For):
        it = loop.iter
        while isinstance(it, nodes.Filter | nodes.Test) and it.node is not None:
            it = it.node
        if _reads_content(it) or (isinstance(it, nodes.Name) and it.name in from_content):
            return "openai"
    return "string"


def _reads_content(node: Any) -> bool:
    from jinja2 import nodes

    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    return False


class ChatTemplate:
    """One compiled chat template; `render` takes the arguments transformers gives a template."""

    def __init__(self, source: str, specials: Mapping[str, str]) -> None:
        self._template = _environment().from_string(source)
        self._specials = dict(specials)
        self.content_format = content_format(source)

    def render(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> str:
        """The prompt text; a template's `raise_exception(...)` becomes a UsageError naming `messages`."""
        import jinja2

        if not all(isinstance(m, Mapping) for m in messages):
            raise UsageError("every message must be an object with a 'role'", field="messages")
        if self.content_format == "string":
            messages = [
                {**m, "content": message_text(m["content"])} if isinstance(m.get("content"), list) else m
                for m in messages
            ]
        try:
            return str(
                self._template.render(
                    messages=messages,
                    tools=options.get("tools"),
                    documents=options.get("documents"),
                    add_generation_prompt=options.get("add_generation_prompt", True),
                    **self._specials,
                    **dict(options.get("extra") or {}),
                )
            )
        except jinja2.TemplateError as err:
            raise UsageError(f"chat template: {err}", field="messages") from None


def _tojson(
    value: Any, indent: int | None = None, separators: tuple[str, str] | None = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
        transformers; for inference it renders its body unchanged."""

        tags = {"generation"}  # noqa: RUF012 (jinja2's own class attribute)

        def parse(self, parser: Any) -> list[nodes.Node]:
            next(parser.stream)
            body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return body

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    filters: dict[str, Callable[..., Any]] = env.filters
    filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env
