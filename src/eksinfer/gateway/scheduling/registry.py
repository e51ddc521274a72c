"""One registry of routing plugins by kebab-case type name, and the dependencies plugins may use.

A built-in plugin is a `PluginBase` subclass registered with the `@plugin(type_name, kind, consumes=...,
produces=...)` decorator; it has a pydantic `Params` model (`extra="forbid"`) and takes `(params, deps)` in
its constructor. Any class with the same attributes (`PluginClass`) may be registered by hand. An unknown
name is an `UnknownNameError` that lists the known ones (or the close ones).
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast

from pydantic import ValidationError

from eksinfer.errors import UnknownNameError
from eksinfer.gateway.scheduling.data import DataKey
from eksinfer.gateway.scheduling.framework import Filter, Picker, Scorer
from eksinfer.kvcache.index import PrefixIndex
from eksinfer.strict import StrictModel, config_error

PluginKind = Literal["filter", "scorer", "picker"]
Plugin = Filter | Scorer | Picker
KIND_PROTOCOLS: dict[PluginKind, type] = {"filter": Filter, "scorer": Scorer, "picker": Picker}


class PluginParams(StrictModel):
    """Base of every plugin's parameters: unknown keys are errors that name the field."""


@dataclass(slots=True)
class PluginDeps:
    """Shared state a plugin may read: the precise (event-fed) index, the router-side approximate index, the
    random source (seedable for tests), the default block size and the life of speculative index entries."""

    index: PrefixIndex = field(default_factory=PrefixIndex)
    approx_index: PrefixIndex = field(default_factory=PrefixIndex)
    rng: random.Random = field(default_factory=random.Random)
    block_size: int = 16
    speculative_ttl_s: float = 2.0


class PluginClass(Protocol):
    """What the registry needs of a plugin class: the class object itself, called with `(params, deps)` to
    build an instance (checked against the kind's protocol when it is created), and a nested pydantic
    `Params` model (read with `params_model`: mypy cannot match a nested class against a protocol member)."""

    @property
    def type_name(self) -> str: ...
    @property
    def kind(self) -> PluginKind: ...
    @property
    def Params(self) -> type[PluginParams]: ...

    def __call__(self, params: Any, deps: PluginDeps) -> object: ...


class PluginBase:
    """Base of the built-in plugins: the contract attributes (set by `@plugin`) and a constructor that keeps
    the parameters and dependencies."""

    type_name: ClassVar[str]
    kind: ClassVar[PluginKind]
    consumes: ClassVar[frozenset[DataKey[Any]]] = frozenset()
    produces: ClassVar[frozenset[DataKey[Any]]] = frozenset()

    Params: ClassVar[type[PluginParams]] = PluginParams  # no parameters; a plugin nests its own `Params`

    def __init__(self, params: PluginParams, deps: PluginDeps) -> None:
        self.params = params
        self.deps = deps


B = TypeVar("B", bound=type[PluginBase])
_BUILTIN: list[type[PluginBase]] = []  # appended to once per class, when its module is imported


def plugin(
    type_name: str,
    kind: PluginKind,
    *,
    consumes: Iterable[DataKey[Any]] = (),
    produces: Iterable[DataKey[Any]] = (),
) -> Callable[[B], B]:
    """Class decorator: set a built-in plugin's contract and add it to the built-in registry."""

    def register(cls: B) -> B:
        cls.type_name = type_name
        cls.kind = kind
        cls.consumes = frozenset(consumes)
        cls.produces = frozenset(produces)
        _BUILTIN.append(cls)
        return cls

    return register


def params_model(cls: PluginClass) -> type[PluginParams]:
    model = getattr(cls, "Params", None)
    if not (isinstance(model, type) and issubclass(model, PluginParams)):
        raise TypeError(f"plugin {cls.type_name!r} has no Params model")
    return model


def consumes(cls: object) -> frozenset[DataKey[Any]]:
    """The keys a plugin class (or instance) consumes; none when it does not say."""
    return frozenset(getattr(cls, "consumes", ()))


def produces(cls: object) -> frozenset[DataKey[Any]]:
    return frozenset(getattr(cls, "produces", ()))


class Registry:
    """Plugin classes by (kind, type name)."""

    def __init__(self) -> None:
        self._classes: dict[PluginKind, dict[str, PluginClass]] = {"filter": {}, "scorer": {}, "picker": {}}

    def register(self, cls: PluginClass) -> PluginClass:
        """Register a plugin class; a duplicate name is a programming error."""
        table = self._classes[cls.kind]
        if cls.type_name in table:
            raise ValueError(f"duplicate {cls.kind} plugin {cls.type_name!r}")
        table[cls.type_name] = cls
        return cls

    def known(self, kind: PluginKind) -> list[str]:
        return sorted(self._classes[kind])

    def get(self, kind: PluginKind, name: str, *, field: str | None = None) -> PluginClass:
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
    ) -> Plugin:
        """Instantiate `name` with validated parameters; errors name `field.parameters.<key>`. The result is
        checked against the kind's protocol (`Filter`, `Scorer` or `Picker`), so a caller may cast to it."""
        cls = self.get(kind, name, field=field)
        try:
            params = params_model(cls).model_validate(dict(parameters))
        except ValidationError as err:
            raise config_error(err, prefix=f"{field}.parameters" if field else "parameters") from None
        instance = cls(params, deps)
        if not isinstance(instance, KIND_PROTOCOLS[kind]):
            raise TypeError(f"{kind} plugin {name!r} lacks the {kind} method")
        return cast(Plugin, instance)


def builtin_registry() -> Registry:
    """A fresh registry holding every built-in plugin: importing each module under `plugins/` runs its
    `@plugin` decorator (done here, not at package import, to keep `eksinfer --help` fast)."""
    from eksinfer.gateway.scheduling import plugins

    for info in pkgutil.walk_packages(plugins.__path__, plugins.__name__ + "."):
        importlib.import_module(info.name)
    registry = Registry()
    for cls in _BUILTIN:
        registry.register(cls)
    return registry
