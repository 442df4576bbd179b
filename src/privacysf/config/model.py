"""The base of every config section: strict keys, finite numbers, and errors that name the field.

Pydantic checks types and bounds; this module turns its report into one :class:`ConfigError` whose
message names each culprit as ``section.key`` and says what is allowed, because the command line
prints that message as the whole explanation (exit 2, no traceback).
"""

from __future__ import annotations

import re
import reprlib
from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from typing_extensions import Self

from privacysf.errors import ConfigError

Probability = Annotated[float, Field(ge=0, le=1)]
"""A chance per batch or a share: a number from 0 to 1."""


class ConfigModel(BaseModel):
    """A frozen, validated config section.

    User input goes through :meth:`from_dict` (or :meth:`updated`), which raises :class:`ConfigError`;
    building a section in code with bad values raises pydantic's ``ValidationError``, a bug to fix.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, use_attribute_docstrings=True)
    is_root: ClassVar[bool] = False
    """Whether error locations start at the section names (the whole config) or in this section."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """Pydantic reads ``true`` as 1 for a number; in a config that is a typo, not a count."""
        kind = cls.model_fields[str(info.field_name)].annotation
        numeric = {int, float} & {kind, *get_args(kind)}
        if isinstance(value, bool) and numeric and bool not in get_args(kind):
            raise ValueError("must be a number, not true or false")
        return value

    @classmethod
    def from_dict(cls, values: Any) -> Self:
        """Parse plain JSON/YAML values (lists become tuples, ``"1e-3"`` a float), checking every rule."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(describe(exc, cls, "" if cls.is_root else cls.__name__)) from None

    def updated(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like a new config (``model_copy`` would skip every rule)."""
        return self.from_dict({**self.model_dump(), **changes})


def describe(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One clause per problem, each naming its field (``data.size``) and what it must be."""
    return "invalid configuration: " + "; ".join(_problem(item, model, prefix) for item in error.errors())


def _problem(item: ErrorDetails, model: type[BaseModel], prefix: str) -> str:
    where = ".".join([prefix, *_path(item["loc"])]).strip(".")
    if item["type"] == "extra_forbidden":
        return f"{where}: unknown key; valid keys are {', '.join(_fields(model, item['loc'][:-1]))}"
    message = item["msg"].removeprefix("Value error, ")  # the project's rules word theirs "must ..."
    message = re.sub(r"^\w+ should", "must", message)  # pydantic's "Input should be ..."
    if not where:  # a rule across sections names its fields itself
        return message
    shown = "" if isinstance(item["input"], dict | BaseModel) else f" (got {reprlib.repr(item['input'])})"
    return f"{where} {message}{shown}"


def _path(loc: tuple[int | str, ...]) -> list[str]:
    """``("attack", "modes", 1)`` -> ``["attack", "modes[1]"]``."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    return parts


def _fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys of the section at ``loc`` (a path of section names from ``model``)."""
    for part in loc:
        section = model.model_fields[str(part)].annotation
        assert isinstance(section, type) and issubclass(section, BaseModel), loc
        model = section
    return list(model.model_fields)
