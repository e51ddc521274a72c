"""The exception tree every part of eksinfer raises, so the CLI and the servers map errors in one place.

EksinferError                 one line for a person; `field` names the offending input when there is one
├── UsageError                bad input (CLI exit 2, HTTP 400)
│   ├── UnknownNameError      a model, GPU, instance or plugin name we do not know (HTTP 404 for models)
│   └── ConfigError           a config or data file that does not validate
├── InfeasibleError           a valid request no plan can meet (CLI exit 3); says what binds
├── UnavailableError          a valid request nothing can take right now, e.g. no healthy endpoint (HTTP 503)
└── UpstreamError             an engine or target that failed or could not be reached (CLI exit 4)

HTTP servers map this tree to statuses in one place each: the gateway in `eksinfer.gateway.http.error_for`;
the simulator answers vLLM's own error bodies (`eksinfer.sim.protocol.ApiError`).
"""

from __future__ import annotations

from collections.abc import Sequence


class EksinferError(Exception):
    """Base class: `str(err)` is one line fit for a terminal or an error body."""

    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.field}: {message}" if self.field else message


class UsageError(EksinferError):
    exit_code = 2


class UnknownNameError(UsageError):
    """A name that is not in a catalog or registry; the message lists the close or known names."""

    def __init__(self, kind: str, name: str, known: Sequence[str], *, field: str | None = None) -> None:
        import difflib

        close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
        super().__init__(f"unknown {kind} {name!r}; {hint}", field=field)
        self.name = name
        self.known = list(known)


class ConfigError(UsageError):
    pass


class InfeasibleError(EksinferError):
    exit_code = 3

    def __init__(self, message: str, *, binding: Sequence[str] = (), nearest: object | None = None) -> None:
        super().__init__(message)
        self.binding = list(binding)
        self.nearest = nearest


class UnavailableError(EksinferError):
    """Nothing can serve a valid request at the moment; a retry later may succeed."""

    exit_code = 4


class UpstreamError(EksinferError):
    exit_code = 4
