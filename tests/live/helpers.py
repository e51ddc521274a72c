"""Small helpers shared by the live tests: ZMQ capture, metric reads, prompts, free ports."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Sequence

import httpx
import zmq

_WORDS_TEXT = (
    "cache block prefix token model engine request route replica event hash gateway cluster node pod "
    "latency throughput queue memory tensor layer attention decode prefill batch stream index"
)
WORDS = _WORDS_TEXT.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def long_text(tag: str, num_words: int) -> str:
    """A deterministic word salad, distinct per tag, so each test's prompts share nothing with others'."""
    rng = random.Random(tag)
    return f"Document {tag}. " + " ".join(rng.choice(WORDS) for _ in range(num_words)) + "."


def metric_sum(url: str, name: str) -> float:
    """Sum of one Prometheus counter/gauge over all its label sets, read from `url`/metrics."""
    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def tokenize(url: str, prompt: str, model: str = "tiny-llama") -> list[int]:
    """Token ids as the engine computes them for a completion prompt (special tokens added)."""
    r = httpx.post(url.rstrip("/") + "/tokenize", json={"model": model, "prompt": prompt}, timeout=30)
    r.raise_for_status()
    return list(r.json()["tokens"])


def cache_hit_tokens(tokens: Sequence[int], cached: Sequence[Sequence[int]], block_size: int) -> int:
    """Prompt tokens vLLM finds in its prefix cache: the longest run of full blocks shared with any sequence
    it cached before, capped at (len - 1) // block_size blocks (vLLM always recomputes the last token)."""
    best = 0
    for seq in cached:
        n = 0
        limit = min(len(tokens), len(seq))
        while n < limit and tokens[n] == seq[n]:
            n += 1
        best = max(best, n // block_size)
    return min(best, (len(tokens) - 1) // block_size) * block_size


class ZmqCapture:
    """Collects raw KV-event frames (topic, seq, payload) from a ZMQ PUB address in a background thread."""

    def __init__(self, address: str, topic: bytes = b"") -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        self.frames: list[list[bytes]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, probe: Callable[[], object], timeout_s: float = 60.0) -> None:
        """Returns once the subscription has reached the publisher, with no frame kept.

        A PUB socket drops what it sends before a subscription reaches it (ZMQ's slow joiner) and nothing
        says when that has happened, so `probe` (a request whose prompt no test uses) runs until a frame
        arrives; the frames it caused are then dropped.
        """
        deadline = time.monotonic() + timeout_s
        while not self.wait_for(1, timeout_s=1.0):
            assert time.monotonic() < deadline, "the KV-event subscription never reached the publisher"
            probe()
        with self._lock:
            self.frames.clear()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(100):
                parts = self._sock.recv_multipart()
                with self._lock:
                    self.frames.append(parts)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[list[bytes]]:
        """Frames so far, waiting until at least `count` arrived or the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.frames) >= count:
                    break
            time.sleep(0.05)
        with self._lock:
            return list(self.frames)

    def close(self) -> list[list[bytes]]:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        self._ctx.term()
        return list(self.frames)
