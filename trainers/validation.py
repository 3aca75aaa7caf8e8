"""What every validated record shares: a strict pydantic base, a problem type and its formatter.

A ``Problem`` is a field path and what is wrong there, whoever found it (pydantic, the service's
path policy, the capacity check, the data check); ``describe`` is how a user reads a list of
them: ``path.to.field: message; other.field: message``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Location = tuple[str | int, ...]


class TextEnum(str, Enum):
    """An enum of words: equal to its text, stored and shown as it (JSON, SQL, f-strings)."""

    def __str__(self) -> str:
        return str(self.value)


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Problem:
    """Something wrong at ``location`` (a field path; empty for the whole document)."""

    location: Location
    message: str

    @property
    def where(self) -> str:
        """The field path as a user writes it: ``search.parameters.eta``."""
        return ".".join(str(part) for part in self.location) or "(top level)"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def problems_of(error: ValidationError) -> list[Problem]:
    """A pydantic error's lines as problems."""
    return [Problem(tuple(e["loc"]), e["msg"]) for e in error.errors()]


def describe(problems: Iterable[Problem]) -> str:
    """Problems in one line each joined by ``; ``: ``path.to.field: message; ...``."""
    return "; ".join(str(problem) for problem in problems)


def describe_errors(error: ValidationError) -> str:
    """A pydantic error as ``describe`` writes problems."""
    return describe(problems_of(error))


def raise_problems(problems: Iterable[Problem], title: str) -> None:
    """Raise one ``ValidationError`` (of the model ``title``) with a line per problem, if any."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("sweep_spec", "{message}", {"message": problem.message}),
            loc=problem.location,
            input=None,
        )
        for problem in problems
    ]
    if details:
        raise ValidationError.from_exception_data(title, details)
