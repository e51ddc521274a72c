"""One registry of routing plugins by kebab-case type name, and the dependencies plugins may use.

Each plugin class declares `type_name` (e.g. `queue-scorer`), `kind` (filter, scorer or picker) and a pydantic
`Params` model (`extra="forbid"`), and takes `(params, deps)` in its constructor. An unknown name is an
`UnknownNameError` that lists the known ones (or the close ones).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import ValidationError

from eksinfer.errors import UnknownNameError
from eksinfer.kvcache.index import PrefixIndex
from eksinfer.strict import StrictModel, config_error

PluginKind = Literal["filter", "scorer", "picker"]


class PluginParams(StrictModel):
    """Base of every plugin's parameters: unknown keys are errors that name the field."""


@dataclass(slots=True)
class PluginDeps:
    """Shared state a plugin may read: the precise (event-fed) index, the router-side approximate index, the
    random source (seedable for tests) and the default block size."""

    index: PrefixIndex = field(default_factory=PrefixIndex)
    approx_index: PrefixIndex = field(default_factory=PrefixIndex)
    rng: random.Random = field(default_factory=random.Random)
    block_size: int = 16


class PluginClass(Protocol):
    type_name: ClassVar[str]
    kind: ClassVar[PluginKind]
    Params: ClassVar[type[PluginParams]]

    def __call__(self, params: Any, deps: PluginDeps) -> Any: ...


class Registry:
    """Plugin classes by (kind, type name)."""

    def __init__(self) -> None:
        self._classes: dict[PluginKind, dict[str, Any]] = {"filter": {}, "scorer": {}, "picker": {}}

    def register(self, cls: Any) -> Any:
        """Register a plugin class (usable as a decorator); a duplicate name is a programming error."""
        table = self._classes[cls.kind]
        if cls.type_name in table:
            raise ValueError(f"duplicate {cls.kind} plugin {cls.type_name!r}")
        table[cls.type_name] = cls
        return cls

    def known(self, kind: PluginKind) -> list[str]:
        return sorted(self._classes[kind])

    def get(self, kind: PluginKind, name: str, *, field: str | None = None) -> Any:
        cls = self._classes[kind].get(name)
        if cls is None:
            raise UnknownNameError(f"{kind} plugin", name, self.known(kind), field=field)
        return cls

    def create(
        self,
        kind: PluginKind,
        name: str,
        parameters: Mapping[str, Any],
        deps: PluginDeps,
        *,
        field: str | None = None,
    ) -> Any:
        """Instantiate `name` with validated parameters; errors name `field.parameters.<key>`."""
        cls = self.get(kind, name, field=field)
        try:
            params = cls.Params.model_validate(dict(parameters))
        except ValidationError as err:
            raise config_error(err, prefix=f"{field}.parameters" if field else "parameters") from None
        return cls(params, deps)


def builtin_registry() -> Registry:
    """A fresh registry holding every built-in plugin (built on demand: no module-level mutable state)."""
    from eksinfer.gateway.scheduling.plugins import builtin_plugin_classes

    registry = Registry()
    for cls in builtin_plugin_classes():
        registry.register(cls)
    return registry


PluginFactory = Callable[[Any, PluginDeps], Any]
