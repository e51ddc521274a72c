"""The one pydantic base for files and bodies a person writes, and the one way a validation failure becomes
a ConfigError line.

`StrictModel` forbids unknown keys (a typo is an error that names the key, not a silently ignored setting)
and is frozen (a validated config is a value). A model that must stay mutable, or that refuses `inf` and
`nan`, adds to `model_config` in its own class: pydantic merges it with this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from eksinfer.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def config_error(
    err: ValidationError, *, prefix: str | None = None, source: str | None = None, default: str | None = None
) -> ConfigError:
    """The first error of `err` as one line: `field` is its dotted location under `prefix` (`routing.index.
    block_size`), else `prefix`, else `default`; `source` (a file name) is appended to the message."""
    first = err.errors()[0]
    # pydantic names an after-validator's step "function-after[...]" in the location: not a field
    where = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    field = f"{prefix}.{where}" if prefix and where else (where or prefix or default)
    message = f"{first['msg']} (in {source})" if source else str(first["msg"])
    return ConfigError(message, field=field)
