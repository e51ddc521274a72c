"""The one map from eksinfer's exception tree to the gateway's HTTP statuses and OpenAI error codes."""

from __future__ import annotations

import pytest

from eksinfer.errors import (
    ConfigError,
    EksinferError,
    InfeasibleError,
    UnavailableError,
    UnknownNameError,
    UsageError,
)
from eksinfer.gateway.http import RequestRefused, error_for
from eksinfer.gateway.scheduling.runner import NoEndpointError


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (UnknownNameError("plugin", "nope", ["a"]), (404, "unknown_name", None)),
        (UsageError("bad field", field="x"), (400, "invalid_request", None)),
        (ConfigError("bad config"), (400, "invalid_request", None)),
        (NoEndpointError("no endpoint left after filter f"), (503, "no_endpoint", None)),
        (UnavailableError("nothing now"), (503, "no_endpoint", None)),
        (InfeasibleError("no plan"), (503, "no_endpoint", None)),
        (EksinferError("a plugin's own error"), (503, "no_endpoint", None)),
        (RequestRefused(413, "too large", "body_too_large"), (413, "body_too_large", None)),
        (RequestRefused(400, "'model' is required", None, param="model"), (400, None, "model")),
    ],
)
def test_error_for(err: EksinferError, expected: tuple[int, str | None, str | None]) -> None:
    assert error_for(err) == expected


def test_no_endpoint_is_not_bad_input() -> None:
    """A request nobody can serve right now is not the client's mistake: not a UsageError (HTTP 400, CLI
    exit 2) but an UnavailableError (HTTP 503)."""
    err = NoEndpointError("none")
    assert not isinstance(err, UsageError)
    assert isinstance(err, UnavailableError)
