"""Trial results to one Parquet file and back: every key of every record a column, nothing lost."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainers.vocabulary import SUMMARY_METRICS

IDENTITY = ("dataset", "backbone", "method", "loss", "seed", "status")
RUN_INFO = ("recipe", "epochs", "comparable", "lambda_mode")
COLUMN_ORDER = (*IDENTITY, *SUMMARY_METRICS, *RUN_INFO)
"""The first columns of a results file, in order; every other key follows, sorted."""

# Parquet key-value metadata naming the columns stored as JSON text (see ``write_results``).
_JSON_COLUMNS_KEY = b"dmsweep.json_columns"


def _column_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = {key for row in rows for key in row}
    return [k for k in COLUMN_ORDER if k in keys] + sorted(keys - set(COLUMN_ORDER))


def write_results(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write trial results, one row each, to one Parquet file at ``path``; the path.

    Every key of every row becomes a column (a row without it gets null there), identity
    columns first (``COLUMN_ORDER``), then the others sorted. A column whose values Arrow cannot
    hold in one type (a number in one row, text in another) is stored as JSON text and decoded
    again by ``read_results``, so no value is lost or coerced.
    """
    rows = [dict(row) for row in rows]
    names = _column_names(rows)
    arrays, json_columns = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            json_columns.append(name)
            encoded = [None if v is None else json.dumps(v, default=str) for v in values]
            arrays.append(pa.array(encoded, type=pa.string()))
    table = pa.Table.from_arrays(arrays, names=names)
    table = table.replace_schema_metadata({_JSON_COLUMNS_KEY: json.dumps(json_columns)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a file written by ``write_results``, every column a key (null as None)."""
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    json_columns = set(json.loads(metadata.get(_JSON_COLUMNS_KEY, b"[]")))
    rows = table.to_pylist()
    for row in rows:
        for name in json_columns:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows
