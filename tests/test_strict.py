"""The shared strict base and the one validation-error-to-ConfigError helper."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError, field_validator

from eksinfer.errors import ConfigError
from eksinfer.strict import StrictModel, config_error


class Inner(StrictModel):
    size: int = Field(1, description="a size")

    @field_validator("size", mode="after")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value


class Outer(StrictModel):
    inner: Inner = Field(default_factory=Inner, description="nested")


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return info.value


@pytest.mark.parametrize(
    ("data", "kwargs", "text"),
    [
        ({"inner": {"typo": 1}}, {}, "inner.typo: Extra inputs are not permitted"),
        ({"inner": {"size": 0}}, {"prefix": "routing"}, "routing.inner.size: Value error, must be positive"),
        ({"inner": {"size": "x"}}, {"source": "a.yaml"}, "inner.size: Input should be a valid integer"),
        ([], {"default": "plan"}, "plan: Input should be a valid dictionary"),
        ([], {"prefix": "routing", "default": "plan"}, "routing: Input should be"),
    ],
)
def test_first_error_names_the_field(data: object, kwargs: dict[str, str], text: str) -> None:
    err = config_error(_error(data), **kwargs)
    assert isinstance(err, ConfigError)
    assert str(err).startswith(text)
    if "source" in kwargs:
        assert str(err).endswith("(in a.yaml)")


def test_strict_models_are_frozen() -> None:
    model = Outer()
    with pytest.raises(ValidationError):
        model.inner = Inner(size=2)  # type: ignore[misc]
