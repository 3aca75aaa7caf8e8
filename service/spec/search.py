"""A spec's Optuna search: its parameters' values or ranges, sampler, samples and scheduler.

Also the caps every list and the trial count of a spec share (``service.spec.model`` uses them).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from trainers.limits import MAX_EPOCHS
from trainers.validation import Problem, StrictModel, raise_problems
from trainers.vocabulary import BOUNDS, DEFAULT_SEARCH_METRIC, SearchableName

MAX_TRIALS = 10_000
# Values per grid axis, per match list and per search parameter; a real grid has a handful.
MAX_LIST = 100
# search.storage: a SQLite file (relative or absolute path), nothing that could carry a password.
SQLITE_FILE = re.compile(r"sqlite:///[^?#@]+")


def redact_url(url: str) -> str:
    """A database ``url`` fit to show or store: no password, no query (it may hold one too)."""
    try:
        return make_url(url).set(query={}).render_as_string(hide_password=True)
    except ArgumentError:
        # everything up to the last "@" of the authority part may be a secret
        return re.sub(r"//.*@", "//***@", url.split("?", 1)[0])


class Range(StrictModel):
    """A continuous search range [low, high], sampled on a log scale if ``log``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers (no NaN or infinity)")
        if not self.low < self.high:
            raise ValueError(f"need low < high; got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got {self.low}")
        return self


class Scheduler(StrictModel):
    """Early stopping of trials: Ray Tune's ASHA."""

    type: Literal["asha"] = Field(description="asha (the only scheduler so far)")
    grace_period: int = Field(
        1, ge=1, le=MAX_EPOCHS, description="epochs every trial runs at least"
    )
    max_t: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="epochs at most; default: the spec's epochs"
    )
    reduction_factor: float = Field(4, gt=1, description="ASHA's eta (Ray Tune's default 4)")


class Search(StrictModel):
    """Optuna search per cell: one study per cell, named ``<sweep id>:<cell id>``."""

    parameters: dict[SearchableName, Annotated[list[float], Field(max_length=MAX_LIST)] | Range] = (
        Field(
            min_length=1,
            description="each a list of values (categorical) or {low, high, log} (a range); lr and "
            "weight_decay replace the recipe's",
        )
    )
    sampler: Literal["grid", "tpe"] = Field(
        "tpe", description="grid (every parameter categorical) or tpe"
    )
    num_samples: int | None = Field(
        None,
        ge=1,
        le=MAX_TRIALS,
        description="settings per cell and seed; default with grid: the grid's size",
    )
    metric: str = Field(DEFAULT_SEARCH_METRIC, description="what the search optimises")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    scheduler: Scheduler | None = Field(None, description="null: every trial runs to the end")
    storage: str | None = Field(
        None,
        description="a SQLite file for the studies, sqlite:///PATH (local runs only); default: "
        "the database DMSWEEP_OPTUNA_STORAGE names in the driver's environment, else "
        "optuna.db in the sweep's folder",
    )

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, url: str | None) -> str | None:
        # A spec is shown, stored and sent around: no database credentials in it.
        if url is not None and not SQLITE_FILE.fullmatch(url):
            shown = redact_url(url)
            raise ValueError(
                "a spec may name only a SQLite file here, sqlite:///PATH (a spec holds no "
                f"database credentials); got {shown!r}. For PostgreSQL, set "
                "DMSWEEP_OPTUNA_STORAGE (or DMSWEEP_OPTUNA_STORAGE_FILE) to its URL in the "
                "environment of the sweep's driver (the Ray head, for the sweep service)"
            )
        return url

    @model_validator(mode="after")
    def _check(self) -> Search:
        problems: list[Problem] = []
        for name, space in self.parameters.items():
            if isinstance(space, Range):
                for end in ("low", "high"):
                    problem = BOUNDS[name].problem(name, getattr(space, end))
                    if problem:
                        problems.append(Problem(("parameters", name, end), problem))
            elif not space:
                problems.append(Problem(("parameters", name), "give at least one value"))
            else:
                for index, value in enumerate(space):
                    problem = BOUNDS[name].problem(name, value)
                    if problem:
                        problems.append(Problem(("parameters", name, index), problem))
                if len(set(space)) != len(space):
                    problems.append(Problem(("parameters", name), "values must be unique"))
        if self.sampler == "grid":
            ranges = [n for n, s in self.parameters.items() if isinstance(s, Range)]
            if ranges:
                problems.append(
                    Problem(
                        ("sampler",),
                        f"the grid sampler needs lists of values; {', '.join(ranges)} "
                        "is a range: use sampler tpe, or list the values",
                    )
                )
            else:
                size = self.grid_size()
                if self.num_samples is None:
                    self.num_samples = size
                elif self.num_samples > size:
                    problems.append(
                        Problem(
                            ("num_samples",),
                            f"the grid has {size} settings; num_samples must be <= {size}",
                        )
                    )
        elif self.num_samples is None:
            problems.append(Problem(("num_samples",), "required with sampler tpe (an int >= 1)"))
        raise_problems(problems, "Search")
        return self

    def grid_size(self) -> int:
        """The number of settings of the categorical grid (ranges count as one)."""
        return math.prod(len(s) if isinstance(s, list) else 1 for s in self.parameters.values())
