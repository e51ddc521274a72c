"""The HTTP face of one simulated engine: vLLM's OpenAI server routes on aiohttp.

Routes: POST /v1/completions, /v1/chat/completions (SSE when `stream`), /v1/responses (and GET
/v1/responses/{id}) for a generate runner; /v1/embeddings, /score, /rerank (and their aliases) for a pooling
runner; /v1/load_lora_adapter, /v1/unload_lora_adapter with runtime LoRA updating; /tokenize, /detokenize,
/reset_prefix_cache; GET /v1/models, /health, /ping, /version, /metrics.
Faults (per replica): `error_rate` answers 500, `stall_rate` holds a request `stall_s` before admission,
`crash_after` stops the replica (listener and engine) once that many generation requests arrived.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from eksinfer.errors import UsageError
from eksinfer.guarded_http import BodyTimeoutError, Guards, read_body
from eksinfer.sim import handlers
from eksinfer.sim import logprobs as lp
from eksinfer.sim import protocol as p
from eksinfer.sim.config import SimOptions
from eksinfer.sim.engine import VLLM_VERSION, Engine
from eksinfer.sim.responses import Stored
from eksinfer.sim.scheduler import SimRequest
from eksinfer.sim.sse import SseChunks, usage_sum
from eksinfer.sim.toolcalls import message_parts
from eksinfer.tokenize import chat_options, encode_chat_body

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_JSON = "application/json"
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"  # the text format generate_latest writes
# Bodies from here on are parsed and tokenized in a worker thread: the built-in tokenizer scans 64 KiB of
# English in about 18 ms on one core (16 KiB: ~4 ms, longer than a thread hop by two orders of magnitude).
OFF_LOOP_BYTES = 16 * 1024


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=p.dumps(body), status=status, content_type=_JSON)


def _plain(text: str) -> web.Response:
    """vLLM's LoRA routes answer a bare `Response(content=...)`: a text body without a content type. aiohttp
    always names one, so it is `application/octet-stream`, what RFC 9110 tells a client to assume for none."""
    return web.Response(body=text.encode())


def _add_fastapi_fallback(app: web.Application) -> None:
    """vLLM serves through FastAPI: an unknown path is 404 `{"detail": "Not Found"}`, a known path with the
    wrong method 405 `{"detail": "Method Not Allowed"}` with `Allow`. Added last, as a catch-all route."""
    allowed: dict[str, set[str]] = {}
    for route in app.router.routes():
        if route.resource is not None:
            allowed.setdefault(route.resource.canonical, set()).add(route.method)

    async def fallback(request: web.Request) -> web.Response:
        methods = allowed.get(request.path)
        if methods:
            headers = {"Allow": ", ".join(sorted(methods - {"HEAD"}))}
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers=headers)
        return web.json_response({"detail": "Not Found"}, status=404)

    app.router.add_route("*", "/{tail:.*}", fallback)


def _parse(
    parse: Callable[[dict[str, Any], p.ModelContext], p.GenerateParams], raw: bytes, ctx: p.ModelContext
) -> p.GenerateParams:
    return parse(p.parse_body(raw), ctx)


def guards(options: SimOptions) -> Guards:
    """Connection limits of one replica, errors in vLLM's shape (`type` is the HTTP reason phrase, as vLLM's
    handler for framework errors writes it)."""

    def body(status: int, message: str, code: str) -> bytes:
        return p.ApiError(status, message, type_=HTTPStatus(status).phrase).body()

    return Guards(
        error_body=body,
        idle_timeout_s=options.keep_alive_timeout_s,
        max_connections=options.max_connections,
    )


def _engine_request_id(rid: str, index: int) -> str:
    """vLLM: completions add the prompt index; the engine appends 8 random hex digits to every id."""
    base = f"{rid}-{index}" if rid.startswith("cmpl-") else rid
    return f"{base}-{secrets.token_hex(4)}"


def _error(err: p.ApiError) -> web.Response:
    return web.Response(body=err.body(), status=err.status, content_type=_JSON)


class SimServer:
    """Routes for one engine. `on_crash` is called once when the crash fault fires."""

    def __init__(self, engine: Engine, *, on_crash: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.options = engine.options
        self.ctx = p.ModelContext(
            names=engine.options.model_names,
            lora_names=engine.loras.names,
            max_model_len=engine.sizing.max_model_len,
            tokenizer=engine.tokenizer,
            enable_auto_tool_choice=engine.options.enable_auto_tool_choice,
            tool_parser=engine.options.tool_call_parser is not None,
            seed=engine.options.seed,
        )
        self._rng = random.Random(engine.options.seed * 31 + engine.rank)
        self._num_requests = 0
        self._on_crash = on_crash
        self._created = int(time.time())
        self.stored_responses: dict[
            str, Stored
        ] = {}  # VLLM_ENABLE_RESPONSES_API_STORE: kept forever, as vLLM
        self.background: dict[str, tuple[asyncio.Task[None], SimRequest]] = {}  # `background: true` running

    async def _stop_background(self, _: web.Application) -> None:
        """Background responses still generating end with the server (no task outlives it)."""
        running = [task for task, _ in self.background.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self.background.clear()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_body_bytes)
        if self.options.runner == "pooling":  # vLLM registers the routes of the tasks the model serves
            if self.options.convert == "embed":
                embed = self._guard(functools.partial(handlers.embeddings, self))
                app.router.add_post("/v1/embeddings", embed)
            for path in ("/score", "/v1/score"):
                app.router.add_post(path, self._guard(functools.partial(handlers.score, self)))
            for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
                app.router.add_post(path, self._guard(functools.partial(handlers.rerank, self)))
        else:
            app.router.add_post("/v1/completions", self._guard(self.completions))
            app.router.add_post("/v1/chat/completions", self._guard(self.chat))
            app.router.add_post("/v1/responses", self._guard(functools.partial(handlers.responses, self)))
            get = self._guard(functools.partial(handlers.get_response, self))
            app.router.add_get("/v1/responses/{response_id}", get)
            cancel = self._guard(functools.partial(handlers.cancel_response, self))
            app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
        if self.options.allow_runtime_lora_updating:  # vLLM: only with VLLM_ALLOW_RUNTIME_LORA_UPDATING
            app.router.add_post("/v1/load_lora_adapter", self._guard(self.load_lora))
            app.router.add_post("/v1/unload_lora_adapter", self._guard(self.unload_lora))
        app.router.add_post("/tokenize", self._guard(self.tokenize))
        app.router.add_post("/detokenize", self._guard(self.detokenize))
        app.router.add_post("/reset_prefix_cache", self.reset_prefix_cache)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics)
        _add_fastapi_fallback(app)
        app.on_cleanup.append(self._stop_background)
        return app

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except p.ApiError as err:
                return _error(err)
            except UsageError as err:
                return _error(p.ApiError(400, str(err), param=err.field))
            except web.HTTPRequestEntityTooLarge:
                limit = self.options.max_request_body_bytes
                msg = f"the request body is larger than {limit} bytes"
                return _error(p.ApiError(413, msg, type_=HTTPStatus(413).phrase, param="body"))
            except BodyTimeoutError as err:
                response = _error(p.ApiError(408, str(err), type_=HTTPStatus(408).phrase, param="body"))
                response.force_close()  # the rest of the body may still be arriving
                return response

        return guarded

    # --- simple routes ------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.engine.metrics.render(), headers={"Content-Type": _PROMETHEUS_TEXT})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.engine.reset_prefix_cache() else 409)

    async def models(self, request: web.Request) -> web.Response:
        root = self.options.model
        cards = [self._card(name, root, None) for name in self.ctx.names]
        adapters = self.engine.loras.adapters
        cards += [self._card(name, path, self.ctx.names[0]) for name, (_, path) in adapters.items()]
        return _json({"object": "list", "data": cards})

    async def load_lora(self, request: web.Request) -> web.Response:
        raw, _ = await self._body(request)
        return _plain(self.engine.loras.load(p.parse_body(raw)))

    async def unload_lora(self, request: web.Request) -> web.Response:
        raw, _ = await self._body(request)
        return _plain(self.engine.loras.unload(p.parse_body(raw)))

    def _card(self, name: str, root: str, parent: str | None) -> dict[str, Any]:
        permission = {
            "id": f"modelperm-{secrets.token_hex(8)}",
            "object": "model_permission",
            "created": self._created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        return {
            "id": name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": None if parent else self.ctx.max_model_len,  # vLLM leaves it out of adapters
            "permission": [permission],
        }

    @functools.cached_property
    def hidden_size(self) -> int:
        """The served model's hidden size: the length of its embeddings."""
        from eksinfer.catalog import get_model

        return get_model(self.options.model).hidden_size

    async def read(self, request: web.Request) -> tuple[bytes, bool]:
        return await self._body(request)

    async def faults(self) -> None:
        await self._faults()

    def text_of(self, ids: list[int]) -> str:
        return self._text(ids)

    async def _body(self, request: web.Request) -> tuple[bytes, bool]:
        """The body within the body deadline, and whether it is large enough to parse and tokenize in a worker
        thread (scanning a few MB of text takes the loop long enough to starve /health and the stream of
        every other request)."""
        raw = await read_body(request, self.options.body_timeout_s)
        return raw, len(raw) >= OFF_LOOP_BYTES

    async def tokenize(self, request: web.Request) -> web.Response:
        raw, large = await self._body(request)
        if large:
            return await asyncio.to_thread(self._tokenize, raw)
        return self._tokenize(raw)

    def _tokenize(self, raw: bytes) -> web.Response:
        body = p.parse_body(raw)
        self.ctx.resolve(body)
        tok = self.engine.tokenizer
        if isinstance(body.get("messages"), list):
            if "add_special_tokens" in body:
                text = tok.apply_chat_template(body["messages"], **chat_options(body))
                ids = tok.encode(text, add_special_tokens=bool(body["add_special_tokens"]))
            else:
                ids = encode_chat_body(tok, body)  # exactly what a chat request is prefilled with
        elif isinstance(body.get("prompt"), str):
            ids = tok.encode(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))
        else:
            raise p.ApiError(400, "either prompt (a string) or messages is required", param="prompt")
        return _json(
            {"count": len(ids), "max_model_len": self.ctx.max_model_len, "tokens": ids, "token_strs": None}
        )

    async def detokenize(self, request: web.Request) -> web.Response:
        raw, _ = await self._body(request)
        body = p.parse_body(raw)
        self.ctx.resolve(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise p.ApiError(400, "tokens must be a list of token ids", param="tokens")
        return _json({"prompt": self.engine.tokenizer.decode(tokens)})

    # --- generation ---------------------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        raw, large = await self._body(request)
        parse = functools.partial(_parse, p.parse_completion, raw, self.ctx)
        params = await asyncio.to_thread(parse) if large else parse()
        return await self._generate(request, params, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw, large = await self._body(request)
        parse = functools.partial(_parse, p.parse_chat, raw, self.ctx)
        params = await asyncio.to_thread(parse) if large else parse()
        return await self._generate(request, params, chat=True)

    async def _faults(self) -> None:
        faults = self.engine.options.faults  # the engine's: replacing its options changes faults at once
        self._num_requests += 1
        if faults.crash_after and self._num_requests > faults.crash_after:
            if self._num_requests == faults.crash_after + 1 and self._on_crash is not None:
                log.warning(
                    "fault injection: replica %d crashes after %d requests",
                    self.engine.rank,
                    faults.crash_after,
                )
                self._on_crash()
            raise p.ApiError(503, "the engine is dead (fault injection)", type_="ServiceUnavailableError")
        if faults.error_rate and self._rng.random() < faults.error_rate:
            raise p.ApiError(500, "injected engine error (fault injection)", type_="InternalServerError")
        if faults.stall_rate and faults.stall_s and self._rng.random() < faults.stall_rate:
            await asyncio.sleep(faults.stall_s)

    def submit(
        self, params: p.GenerateParams, on_tokens: Callable[[SimRequest], None], index: int, rid: str = ""
    ) -> SimRequest:
        """Choice `index` of a request: choices after the first get their own seed, so n > 1 differ.
        The engine request id is vLLM's: the response id, the choice index for completions, a random
        suffix (it is the `remote_request_id` a prefill returns). Only choice 0 carries kv_transfer_params."""
        script = params.plan(index).script
        seed = params.seed if index == 0 else (params.seed or 0) + 7919 * index
        return self.engine.add_request(
            params.prompt_ids,
            max_tokens=params.max_tokens,
            ignore_eos=params.ignore_eos and script is None,
            lora_name=params.lora_name,
            cache_salt=params.cache_salt,
            seed=seed,
            on_tokens=on_tokens,
            script=None if script is None else self.engine.tokenizer.encode(script, add_special_tokens=False),
            kv_transfer_params=params.kv_transfer_params if index == 0 else None,
            request_id=_engine_request_id(rid, index) if rid else None,
        )

    def reasoning_tokens(self, params: p.GenerateParams) -> int:
        """How many leading output tokens are reasoning: with --reasoning-parser, half the expected answer
        (--natural-output-tokens, else max_tokens) of free text; 0 otherwise."""
        if self.options.reasoning_parser is None or params.output.mode != "text":
            return 0
        expected = self.options.natural_output_tokens or params.max_tokens
        return max(expected // 2, 1)

    def usage_of(self, req: SimRequest, *, stream: bool) -> dict[str, Any]:
        cached = max(req.num_cached_tokens, 0) if self.options.enable_prompt_tokens_details else None
        remote = req.kv_params
        if cached is not None and remote and remote.get("do_remote_prefill"):
            # vLLM 0.32 reports the prefill engine's own cache hits, not the (full) hit of the transfer
            theirs = remote.get("remote_prefill_cached_tokens")
            if isinstance(theirs, int) and not isinstance(theirs, bool):
                cached = theirs
        return p.usage(req.num_prompt_tokens, req.num_output_tokens, cached, stream=stream)

    def add_reasoning_usage(
        self, use: dict[str, Any], params: p.GenerateParams, reqs: list[SimRequest], *, chat: bool
    ) -> dict[str, Any]:
        """With --reasoning-parser vLLM's chat usage counts the reasoning tokens of every choice in
        `completion_tokens_details` (`{"reasoning_tokens": n}`, whole and in the final usage chunk)."""
        if chat and self.options.reasoning_parser is not None:
            split = self.reasoning_tokens(params)
            eos = self.engine.tokenizer.eos_token_id
            thought = sum(min(split, sum(1 for t in r.output_ids if t != eos)) for r in reqs)
            use["completion_tokens_details"] = {"reasoning_tokens": thought}
        return use

    def _text(self, ids: list[int]) -> str:
        eos = self.engine.tokenizer.eos_token_id
        return self.engine.tokenizer.decode([t for t in ids if t != eos])

    async def _generate(
        self, request: web.Request, params: p.GenerateParams, *, chat: bool
    ) -> web.StreamResponse:
        await self._faults()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(8)}"
        created = int(time.time())
        if params.stream:
            return await self._stream(request, params, rid, created, chat=chat)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reqs: list[SimRequest] = []

        def on_tokens(r: SimRequest) -> None:
            if all(q.finish_reason is not None for q in reqs) and not done.done():
                done.set_result(None)

        reqs.extend(self.submit(params, on_tokens, i, rid) for i in range(params.n))
        try:
            await done
        except asyncio.CancelledError:
            for req in reqs:
                self.engine.abort(req)
            raise
        if any(req.finish_reason == "error" for req in reqs):
            raise p.ApiError(
                500, "the engine stopped before the request finished", type_="InternalServerError"
            )
        return _json(self._whole(params, reqs, rid, created, chat=chat))

    def _whole(
        self, params: p.GenerateParams, reqs: list[SimRequest], rid: str, created: int, *, chat: bool
    ) -> dict[str, Any]:
        """The non-streamed body: one choice per request, usage summed over them (as vLLM counts n)."""
        use = usage_sum(self.usage_of(reqs[0], stream=False), reqs)
        use = self.add_reasoning_usage(use, params, reqs, chat=chat)
        tok = self.engine.tokenizer
        body: dict[str, Any] = {}
        choices = []
        for i, req in enumerate(reqs):
            text, key = self._text(req.output_ids), lp.request_key(params.prompt_ids, params.seed, i)
            if chat:
                split = self.reasoning_tokens(params)
                thought: str | None = None
                if (
                    split
                ):  # a reasoning model: the first `split` tokens are its thinking (vLLM separates them)
                    ids = [t for t in req.output_ids if t != self.engine.tokenizer.eos_token_id]
                    thought, text = self._text(ids[:split]) or None, self._text(ids[split:])
                content, calls, finish = message_parts(params.plan(i), text, req.finish_reason)
                if split and not content:
                    content = None  # still thinking when it stopped: vLLM has no content
                if not params.include_reasoning:
                    thought = (
                        None  # include_reasoning: false drops it (and the logprobs, which would show it)
                    )
                body = p.chat_response(
                    rid, created, params.model, content, finish, use, tool_calls=calls, reasoning=thought
                )
                if params.logprobs is not None and (params.include_reasoning or not split):
                    entries = lp.chat_content(tok, key, req.output_ids, 0, params.logprobs)
                    body["choices"][0]["logprobs"] = {"content": entries}
            else:
                echo = params.echo_prompt or ""
                body = p.completion_response(rid, created, params.model, echo + text, req.finish_reason, use)
                if params.logprobs is not None:
                    prompt = params.prompt_ids if params.echo_prompt is not None else ()
                    block = lp.completion_block(
                        tok, key, req.output_ids, 0, params.logprobs, 0, prompt_ids=prompt
                    )
                    body["choices"][0]["logprobs"] = block
            body["choices"][0]["index"] = i
            choices.extend(body["choices"])
        body["choices"] = choices
        body["kv_transfer_params"] = reqs[0].kv_out  # vLLM: the first output's, non-streamed responses only
        if params.prompt_logprobs is not None:
            prompt_lps = lp.prompt_logprobs(
                tok,
                lp.request_key(params.prompt_ids, params.seed, 0),
                params.prompt_ids,
                params.prompt_logprobs,
            )
            for choice in choices if not chat else ():
                choice["prompt_logprobs"] = prompt_lps
            if chat:
                body["prompt_logprobs"] = prompt_lps
        return body

    async def _stream(
        self, request: web.Request, params: p.GenerateParams, rid: str, created: int, *, chat: bool
    ) -> web.StreamResponse:
        wake = asyncio.Event()
        reqs = [self.submit(params, lambda r: wake.set(), i, rid) for i in range(params.n)]
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        tok = self.engine.tokenizer
        split = self.reasoning_tokens(params) if chat else 0
        sse = [
            SseChunks(tok, params, rid, created, chat=chat, index=i, reasoning_tokens=split)
            for i in range(params.n)
        ]
        sent = [0] * params.n
        try:
            await response.prepare(request)
            while True:
                await wake.wait()
                wake.clear()
                if any(req.finish_reason == "error" for req in reqs):  # vLLM ends with an error event
                    err = p.ApiError(
                        500, "the engine stopped before the request finished", type_="InternalServerError"
                    )
                    await response.write(b"data: " + err.body() + b"\n\ndata: [DONE]\n\n")
                    break
                parts: list[bytes] = []
                for i, req in enumerate(reqs):
                    parts += sse[i].render(req, sent[i], stamp=len(reqs) == 1)
                    sent[i] = req.num_output_tokens
                finished = all(req.finish_reason is not None for req in reqs)
                if finished:
                    use = usage_sum(self.usage_of(reqs[0], stream=True), reqs)
                    use = self.add_reasoning_usage(use, params, reqs, chat=chat)
                    parts += sse[0].end(use)
                if parts:
                    await response.write(b"".join(parts))
                if finished:
                    break
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            for req in reqs:
                self.engine.abort(req)
            raise
        return response
