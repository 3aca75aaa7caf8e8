"""The paper's reported numbers, one CSV per table in ``search_spaces/paper_results/``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from service.results.package_data import search_spaces_folder

PAPER_RESULTS = search_spaces_folder("paper_results")
"""The folder of the paper's numbers (CSV files, one per table): package data of the install."""


def _number(text: str) -> float | int | str | None:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_paper_results(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The paper's reported numbers: every row of each table's CSV in ``folder``, numbers parsed.

    ``folder`` defaults to ``search_spaces/paper_results/`` as installed (Tables 1-9; see
    its README.md). Each row has ``table, dataset, backbone, method, loss, recipe`` (the
    dmsweep recipe the table's numbers were trained with) and the paper's metrics (``top1``:
    median top-1 of the last 10 epochs, mean of three trials; ``fgsm_error`` for Table 8).
    Table 7's rows (semi-supervised) also have ``algorithm`` and ``labels``, and their ``top1``
    is the best top-1 with its ± in ``top1_std``; the supervised pivot leaves them out. So do
    Tables 6 and 9's (transfer), Table 9's with ``as_side`` and ``labelled_mixup`` too.
    ``table`` stays text ("1", "8"). Only ``table<N>.csv`` files are tables: the folder holds
    other CSVs (the parity table of the settings, ``parity.csv``).
    """
    rows = []
    for csv_path in sorted(Path(folder or PAPER_RESULTS).glob("table*.csv")):
        with csv_path.open(newline="") as handle:
            for raw in csv.DictReader(handle):
                row = {k: _number(v) for k, v in raw.items()}
                row["table"] = str(raw["table"])
                rows.append(row)
    return rows
