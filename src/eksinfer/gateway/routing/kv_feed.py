"""The KV-event subscribers: one per endpoint that publishes events, sharing one ZMQ context, feeding the
event-fed prefix index. Stopping a replaced or removed subscriber runs in a tracked background task."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq.asyncio

from eksinfer.gateway.routing.tasks import TaskSet
from eksinfer.gateway.scheduling.config import EventsConfig
from eksinfer.kvcache.index import PrefixIndex
from eksinfer.kvcache.subscriber import KvEventSubscriber, replay_endpoint_for


class KvEventFeed:
    def __init__(self, config: EventsConfig, index: PrefixIndex, tasks: TaskSet) -> None:
        self.config = config
        self.index = index
        self._tasks = tasks
        self._subscribers: dict[str, KvEventSubscriber] = {}
        self._zmq: zmq.asyncio.Context | None = None
        self._started = False

    def start(self) -> None:
        self._started = True
        for sub in self._subscribers.values():
            sub.start()

    async def stop(self) -> None:
        self._started = False
        subs = list(self._subscribers.values())
        self._subscribers.clear()
        await asyncio.gather(*(s.stop() for s in subs), return_exceptions=True)
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None

    def subscribe(self, endpoint_id: str, kv_events: str | None, kv_replay: str | None = None) -> None:
        """(Re)subscribe to an endpoint's events at `kv_events` (its ZMQ PUB address); None unsubscribes."""
        self.unsubscribe(endpoint_id)
        if not kv_events:
            return
        ev = self.config
        replay = kv_replay or replay_endpoint_for(kv_events, ev.replay_port_offset)
        if self._zmq is None:
            self._zmq = zmq.asyncio.Context()  # one context (one I/O thread) for every subscriber
        sub = KvEventSubscriber(
            endpoint_id,
            kv_events,
            replay,
            on_event=self.index.apply_event,
            on_reset=self.index.clear_endpoint,
            topic=ev.topic,
            reconnect_s=ev.reconnect_s,
            replay_timeout_s=ev.replay_timeout_s,
            silence_reconnect_s=ev.silence_reconnect_s,
            probe_s=ev.probe_s,
            context=self._zmq,
        )
        self._subscribers[endpoint_id] = sub
        if self._started:
            sub.start()

    def unsubscribe(self, endpoint_id: str) -> None:
        sub = self._subscribers.pop(endpoint_id, None)
        if sub is not None:
            self._tasks.spawn(sub.stop(), name=f"stop kv events {endpoint_id}")

    def stats(self) -> dict[str, dict[str, Any]]:
        return {eid: s.stats.as_dict() for eid, s in self._subscribers.items()}
