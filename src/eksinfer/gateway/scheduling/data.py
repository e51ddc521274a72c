"""The data a routing plugin consumes and produces, as declared keys.

A plugin class declares `consumes` and `produces` (frozensets of `DataKey`). Keys the gateway supplies
(`GATEWAY_KEYS`) are always available, except the costly ones (`TOKEN_IDS`, `BLOCK_KEYS`), which the router
computes only for a profile with a plugin that consumes them. A key a plugin produces is a typed annotation
on the request, read and written through the key (never by a bare string), so a profile is checked when it
is built: a plugin that consumes a key no earlier plugin produces and the gateway does not supply is a
`ConfigError` naming that plugin. (llm-d's scheduler checks its plugins' produced and consumed data keys in
the same way when it loads a config; this is our own, smaller form.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from eksinfer.gateway.scheduling.framework import EndpointId, RoutingRequest

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DataKey(Generic[T]):
    """One named piece of per-request data; `source` says who provides it."""

    name: str
    source: Literal["gateway", "plugin"]
    doc: str

    def get(self, request: RoutingRequest) -> T | None:
        value: T | None = request.annotations.get(self.name)  # no cast(): this runs several times per request
        return value

    def put(self, request: RoutingRequest, value: T) -> T:
        request.annotations[self.name] = value
        return value

    def setdefault(self, request: RoutingRequest, factory: Callable[[], T]) -> T:
        found: T | None = request.annotations.get(self.name)
        if found is None:
            found = request.annotations[self.name] = factory()
        return found


# Supplied by the gateway.
TOKEN_IDS: DataKey[Any] = DataKey("token-ids", "gateway", "the prompt's token ids (tokenized on demand)")
BLOCK_KEYS: DataKey[dict[int, list[Any]]] = DataKey(
    "block_keys", "gateway", "{block_size: [key, ...]} of the prompt's full token blocks (needs token ids)"
)
ENDPOINT_METRICS: DataKey[Any] = DataKey(
    "endpoint-metrics", "gateway", "each endpoint's scraped metrics and the gateway's in-flight counts"
)
CACHE_SALT: DataKey[str] = DataKey("cache_salt", "gateway", "the request's `cache_salt`, when given")

# Produced by plugins (the prefix helpers in scheduling.prefix write them for the plugins that call them).
PRECISE_MATCH: DataKey[dict[str, int]] = DataKey(
    "precise_match", "plugin", "{endpoint_id: matched prompt tokens} from the event-fed index"
)
APPROX_KEYS: DataKey[list[Any]] = DataKey(
    "approx_keys", "plugin", "character- or token-block keys of the prompt for the router-side index"
)
APPROX_MATCH: DataKey[dict[str, int]] = DataKey(
    "approx_match", "plugin", "{endpoint_id: matched blocks} in the router-side approximate index"
)
MATCHED_TOKENS: DataKey[dict[str, int]] = DataKey(
    "matched_tokens",
    "plugin",
    "{endpoint_id: predicted cached prompt tokens}: precise when the request was tokenized, else approximate",
)
KV_COST: DataKey[dict[EndpointId, float]] = DataKey(
    "kv_cost", "plugin", "{endpoint_id: cost in prompt-token equivalents} (kv-cost-scorer)"
)
SPECULATED: DataKey[set[str]] = DataKey(
    "speculated", "plugin", "endpoints whose index already holds this request's blocks speculatively"
)

GATEWAY_KEYS = frozenset({TOKEN_IDS, BLOCK_KEYS, ENDPOINT_METRICS, CACHE_SALT})
TOKEN_KEYS = frozenset({TOKEN_IDS, BLOCK_KEYS})  # consuming one of these makes the router tokenize
