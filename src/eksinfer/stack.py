"""`eksinfer up`: simulated engines in a subprocess (`eksinfer sim --replicas N`) behind a gateway in-process.

Ports: gateway on `--port` (8000); replica i of the simulator on `sim_port + i` (8100 + i) with its KV-event
PUB socket on `kv_events_port + i` (5557 + i) and its replay socket `REPLAY_OFFSET` ports higher, which is how
vLLM offsets data-parallel ranks. The gateway uses the simulator's built-in tokenizer, so its block keys match
what the engines report in their KV events exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from eksinfer.errors import UpstreamError, UsageError
from eksinfer.gateway.config import GatewayConfig, parse_config
from eksinfer.lifecycle import PARENT_ENV

log = logging.getLogger(__name__)

REPLAY_OFFSET = 100
HEALTH_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class StackOptions:
    replicas: int = 4
    port: int = 8000
    host: str = "127.0.0.1"
    preset: str = "kv-aware"
    sim_port: int = 8100
    kv_events_port: int = 5557
    model: str | None = None
    gpu: str | None = None
    time_scale: float | None = None
    num_gpu_blocks: int | None = None
    block_size: int = 16
    sim_args: tuple[str, ...] = field(default_factory=tuple)

    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.sim_port + i}" for i in range(self.replicas)]


def sim_command(opts: StackOptions) -> list[str]:
    """The simulator's command line (vLLM flag names)."""
    kv = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{opts.kv_events_port}",
        "replay_endpoint": f"tcp://*:{opts.kv_events_port + REPLAY_OFFSET}",
    }
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "sim", "--replicas", str(opts.replicas)]
    cmd += ["--host", "127.0.0.1", "--port", str(opts.sim_port), "--block-size", str(opts.block_size)]
    cmd += ["--kv-events-config", json.dumps(kv)]
    for flag, value in (
        ("--model", opts.model),
        ("--gpu", opts.gpu),
        ("--time-scale", opts.time_scale),
        ("--num-gpu-blocks", opts.num_gpu_blocks),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(opts.sim_args)


def gateway_config(opts: StackOptions) -> GatewayConfig:
    """The gateway in front of the simulator: static endpoints with their KV-event addresses."""
    static = [
        {"url": url, "kv_events": f"tcp://127.0.0.1:{opts.kv_events_port + i}"}
        for i, url in enumerate(opts.replica_urls())
    ]
    routing: dict[str, Any] = {
        "preset": opts.preset,
        "block_size": opts.block_size,
        "tokenizer": {"mode": "builtin"},
        "events": {"replay_port_offset": REPLAY_OFFSET},
    }
    return parse_config(
        {
            # a developer's stack on loopback: say which engine answered
            "server": {"host": opts.host, "port": opts.port, "route_headers": True},
            "endpoints": {"static": static},
            "scrape": {"interval_s": 0.1},
            "routing": routing,
        }
    )


class SimProcess:
    """The simulator subprocess: started, waited for, stopped with SIGTERM (then SIGKILL after a grace)."""

    def __init__(self, opts: StackOptions) -> None:
        self._opts = opts
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    async def start(self) -> None:
        taken = taken_ports(self._opts)
        if taken:
            port, flag, what = taken[0]
            raise UsageError(
                f"port {port} ({what}) is already in use; stop what holds it or choose other ports",
                field=flag,
            )
        fd, name = tempfile.mkstemp(prefix="eksinfer-sim-", suffix=".log")
        self.log_path = Path(name)
        self._log = os.fdopen(fd, "wb")
        cmd = sim_command(self._opts)
        log.info("starting simulator: %s", " ".join(cmd))
        self._proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, PARENT_ENV: str(os.getpid())},
        )
        try:
            await self._wait_healthy()
        except BaseException:
            await self.stop()
            raise

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        pending = set(self._opts.replica_urls())
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while pending:
                if self._proc is not None and self._proc.returncode is not None:
                    raise UpstreamError(
                        f"the simulator exited with code {self._proc.returncode}: {self.tail()}"
                    )
                if time.monotonic() > deadline:
                    raise UpstreamError(f"the simulator did not become healthy in {HEALTH_TIMEOUT_S:g} s")
                for url in list(pending):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(url + "/health") as resp:
                            if resp.status == 200:
                                pending.discard(url)
                await asyncio.sleep(0.1)

    async def died(self) -> None:
        """Returns never while the simulator runs; raises UpstreamError (with its last log lines) once it
        exits, so `eksinfer up` stops instead of answering 503 forever."""
        proc = self._proc
        if proc is None:
            return
        code = await proc.wait()
        tail = self.tail()
        raise UpstreamError(f"the simulator exited with code {code}; stopping: {tail}")

    def tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    async def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)  # its last lines went into any error already
            self.log_path = None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None


def _in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def taken_ports(opts: StackOptions) -> list[tuple[int, str, str]]:
    """Ports the stack needs that something else holds: (port, flag, what). Checked before starting, since
    a simulator that cannot bind exits while whatever holds its port answers the health checks."""
    wanted: list[tuple[str, int, str, str]] = [("127.0.0.1", opts.port, "--port", "the gateway")]
    for i in range(opts.replicas):
        wanted.append(("127.0.0.1", opts.sim_port + i, "--sim-port", f"engine {i}"))
        wanted.append(("0.0.0.0", opts.kv_events_port + i, "--kv-events-port", f"engine {i} KV events"))
        replay = opts.kv_events_port + REPLAY_OFFSET + i
        wanted.append(("0.0.0.0", replay, "--kv-events-port", f"engine {i} KV-event replay"))
    return [(port, flag, what) for host, port, flag, what in wanted if port and _in_use(host, port)]


def banner(opts: StackOptions, port: int, model: str) -> str:
    """What `eksinfer up` prints once everything is ready: how to call it and where to look."""
    base = f"http://localhost:{port}"
    last = opts.sim_port + opts.replicas - 1
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 32}}'
    sdk = (
        f'from openai import OpenAI; c = OpenAI(base_url="{base}/v1", api_key="none"); '
        f'print(c.chat.completions.create(model="{model}", '
        'messages=[{"role": "user", "content": "Hi"}], max_tokens=16).choices[0].message.content)'
    )
    return "\n".join(
        [
            f"eksinfer is up: {opts.replicas} simulated engines (ports {opts.sim_port}-{last})"
            f" behind the gateway on {base} (preset {opts.preset})",
            "",
            f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\",
            f"    -d '{body}'",
            "",
            f"  python -c '{sdk}'",
            "",
            f"  models:  {base}/v1/models",
            f"  metrics: {base}/metrics (gateway), http://127.0.0.1:{opts.sim_port}/metrics (engine 0)",
            f"  status:  {base}/status (endpoints, load, TTFT, recent routing decisions)",
            "  routing: the x-eksinfer-route response header explains every decision",
            "Ctrl-C stops the gateway and the engines.",
        ]
    )
