"""BedrockClient: OpenAI chat completions answered by Amazon Bedrock Runtime through real botocore.

Why botocore in threads rather than an async HTTP client: botocore brings SigV4 signing, the standard
credential chain (EKS Pod Identity and IRSA in a cluster, refreshed before expiry) and the event-stream
decoder, all maintained by AWS; re-implementing them over aiohttp would be more code to get wrong. Its calls
block, so every one runs in a ThreadPoolExecutor of `max_concurrency` workers, and an asyncio semaphore of
the same size admits requests (a stream holds its slot until it ends), so a request never waits for a thread
while it holds a slot, and the event loop only ever awaits. A stream is one worker job that opens it and
reads it event by event, handing each decoded event to the loop (`call_soon_threadsafe` into a queue) as it
arrives: one hand-off per event instead of a round trip per event (benchmarks/bench_bedrock.py measured
both). A client that leaves closes the stream's socket from the loop, which ends the worker's reads.

botocore's own retries are off (`total_max_attempts: 1`): the gateway's retry budget and cascade decide
whether a throttled or failed call is tried again, here or on another tier.

Credentials never leave botocore: errors carry AWS's code and a redacted message (`errors.redact`), chained
exceptions are dropped (`from None`), and botocore's DEBUG logs, which print signed headers including the
session token, are capped at INFO when the client is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import botocore.config
import botocore.exceptions as boto_errors
import botocore.session
import urllib3.exceptions

from eksinfer.gateway.bedrock import answer
from eksinfer.gateway.bedrock.config import BedrockPoolConfig
from eksinfer.gateway.bedrock.errors import BedrockError, from_aws, redact
from eksinfer.gateway.bedrock.translate import to_converse
from eksinfer.gateway.http import RequestRefused

logger = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()  # the pump's last item


class BedrockClient:
    """One Bedrock pool: `complete` and `stream` take an OpenAI chat body and the OpenAI model name."""

    def __init__(self, config: BedrockPoolConfig, *, session: botocore.session.Session | None = None) -> None:
        self.config = config
        self._session = session
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="bedrock")
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.inflight = 0  # requests holding a slot (streams included)
        self._no_prefill: set[str] = set()  # listed in assistant_prefill, but Bedrock refused one
        _cap_botocore_logs()

    def serves(self, model: str) -> bool:
        return model in self.config.models

    # --- the public surface ------------------------------------------------------------------------

    async def complete(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The `chat.completion` for `body`; raises BedrockError or RequestRefused."""
        request = self._request(body, model)
        try:
            async with self._slot():
                response = await self._run(self._call, "converse", request)
        except BedrockError as err:
            if not self._prefill_refused(err, body, model):
                raise
            async with self._slot():  # once more, asking for the rest instead (translate.py)
                response = await self._run(self._call, "converse", self._request(body, model))
        return answer.completion(response, model=model, rid=_rid(), created=int(time.time()))

    async def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        """`chat.completion.chunk` dicts as ConverseStream events arrive, the usage chunk last when
        `stream_options.include_usage`. Nothing is yielded before the first content, so an error raised
        before the first chunk reached no client."""
        yielded = False
        try:
            async with contextlib.aclosing(self._stream(body, model)) as chunks:
                async for chunk in chunks:
                    yielded = True
                    yield chunk
        except BedrockError as err:
            if yielded or not self._prefill_refused(err, body, model):
                raise
            async with contextlib.aclosing(self._stream(body, model)) as chunks:
                async for chunk in chunks:
                    yield chunk

    def _prefill_refused(self, err: BedrockError, body: dict[str, Any], model: str) -> bool:
        """A model listed in `assistant_prefill` refused the prefill of a continuation after all: it is
        continued with the instruction from now on, in this process (a warning says to fix the config)."""
        if err.code != "bedrock_validation" or body.get("continue_final_message") is not True:
            return False
        text = str(err).lower()
        if "prefill" not in text and "end with a user message" not in text:
            return False
        if model not in self._no_prefill:
            self._no_prefill.add(model)
            logger.warning(
                "Bedrock refused an assistant prefill for %s: continuing it with an instruction; remove it "
                "from the pool's assistant_prefill",
                model,
            )
        return True

    async def _stream(self, body: dict[str, Any], model: str) -> AsyncGenerator[dict[str, Any], None]:
        request = self._request(body, model)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        translator = answer.StreamTranslator(
            model=model, rid=_rid(), created=int(time.time()), include_usage=include_usage
        )
        async with self._slot():
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[Any] = asyncio.Queue()
            opened: list[Any] = []  # the botocore EventStream, once the response headers came
            gone = threading.Event()  # the consumer left: the pump stops at its next event

            def put(item: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read
                    loop.call_soon_threadsafe(events.put_nowait, item)

            self._pool.submit(self._pump, request, opened, put, gone)
            try:
                while (event := await events.get()) is not _END:
                    if isinstance(event, BaseException):
                        raise event
                    for chunk in translator.feed(event):
                        yield chunk
                if not translator.finished:
                    raise BedrockError(502, "bedrock_stream_truncated", "Amazon Bedrock ended the stream "
                                       "before messageStop", retryable=True)  # fmt: skip
            finally:
                gone.set()
                if opened:
                    _quiet_close(opened[0])  # a socket close: does not block; ends the pump's reads

    async def start(self) -> None:
        """Builds the botocore client now (it reads its service model from disk) instead of on first use."""
        await self._run(self._botocore)

    async def warm(self) -> None:
        """Builds the botocore client (service model, credential chain) on a worker thread, before traffic."""
        await self._run(self._botocore)

    async def close(self) -> None:
        client = self._client
        if client is not None:
            await self._run(client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- internals ---------------------------------------------------------------------------------

    def _request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        model_id = self.config.models.get(model)
        if model_id is None:
            raise RequestRefused(
                404, f"model {model!r} is not served by the Bedrock pool", "model_not_found", param="model"
            )
        prefill = model in self.config.assistant_prefill and model not in self._no_prefill
        return to_converse(
            body, model_id, drop_unsupported=self.config.drop_unsupported_params, prefill=prefill
        )

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.config.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise BedrockError(
                429, "bedrock_saturated", f"all {self.config.max_concurrency} Bedrock slots are busy",
                retryable=True,
            ) from None  # fmt: skip
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread, with botocore's exceptions turned into BedrockError there."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._guarded, fn, *args)

    def _botocore(self) -> Any:
        with self._client_lock:
            if self._client is None:
                session = self._session or botocore.session.get_session()
                config = botocore.config.Config(
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=self.config.connect_timeout_s,
                    read_timeout=self.config.read_timeout_s,
                    max_pool_connections=self.config.max_concurrency,
                    user_agent_extra="eksinfer-gateway",
                )
                self._session = session
                self._client = session.create_client(
                    "bedrock-runtime",
                    region_name=self.config.region,
                    endpoint_url=self.config.endpoint_url,
                    config=config,
                )
            return self._client

    def _call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = getattr(self._botocore(), operation)(**request)
        return result

    def _pump(
        self, request: dict[str, Any], opened: list[Any], put: Callable[[Any], None], gone: threading.Event
    ) -> None:
        """On a worker: opens the stream and hands each event to the loop as it is decoded (one hand-off
        per event, no round trip), then `_END`; an error is handed over as a BedrockError."""

        def drain() -> None:
            stream = self._call("converse_stream", request)["stream"]
            opened.append(stream)
            for event in stream:
                if gone.is_set():
                    _quiet_close(stream)
                    return
                put(event)

        try:
            self._guarded(drain)
            put(_END)
        except BedrockError as err:
            put(err)

    def _secrets(self) -> list[str | None]:
        """The credentials in use, to scrub from error messages (on a worker thread: may refresh)."""
        try:
            credentials = self._session.get_credentials() if self._session is not None else None
            if credentials is None:
                return []
            frozen = credentials.get_frozen_credentials()
            return [frozen.access_key, frozen.secret_key, frozen.token]
        except Exception:  # a failing chain has nothing to scrub
            return []

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except boto_errors.ClientError as err:  # EventStreamError (in-stream exceptions) included
            error = err.response.get("Error", {})
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raised = from_aws(
                str(error.get("Code", "")), str(error.get("Message", "")), status, self._secrets()
            )
        except (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError,
                boto_errors.CredentialRetrievalError):  # fmt: skip
            raised = BedrockError(
                502, "bedrock_no_credentials",
                "no usable AWS credentials for Amazon Bedrock (Pod Identity, IRSA, environment or profile)",
                retryable=False,
            )  # fmt: skip
        except boto_errors.ReadTimeoutError:
            raised = BedrockError(504, "bedrock_timeout", f"no answer from Amazon Bedrock in "
                                  f"{self.config.read_timeout_s} s", retryable=True)  # fmt: skip
        except (boto_errors.ConnectTimeoutError, boto_errors.EndpointConnectionError):
            raised = BedrockError(
                502, "bedrock_connect", "could not connect to Amazon Bedrock", retryable=True
            )
        except boto_errors.ParamValidationError as err:
            raised = BedrockError(
                400, "bedrock_invalid_request", redact(str(err), self._secrets()), retryable=False
            )
        except (boto_errors.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as err:
            raised = BedrockError(
                502, "bedrock_connection", f"the connection to Amazon Bedrock failed ({type(err).__name__})",
                retryable=True,
            )  # fmt: skip
        logger.debug("bedrock call failed: %s %s", raised.code, raised)
        raise raised


def _quiet_close(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # closing a broken connection may raise; nothing is left to do with it
        logger.debug("closing a Bedrock stream failed", exc_info=False)


def _rid() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _cap_botocore_logs() -> None:
    """botocore's DEBUG records print signed requests (session token included): never below INFO, even if
    the root logger is lowered later."""
    log = logging.getLogger("botocore")
    if log.level < logging.INFO:
        log.setLevel(logging.INFO)
