"""The paper's tables as its extracted text has them: one tab-separated line per method."""

from __future__ import annotations

from tests.support.real_data import paper_lines

# The paper's row labels -> dmsweep's method names.
ROW_LABELS = {
    "Vanilla": "vanilla",
    "Mixup": "mixup",
    "CutMix": "cutmix",
    "ManifoldMix": "manifoldmix",
    "SaliencyMix": "saliencymix",
    "FMix*": "fmix",
    "PuzzleMix": "puzzlemix",
    "ResizeMix*": "resizemix",
    "AutoMix*": "automix",
    "SAMix*": "samix",
    "RSB*": "mixup_cutmix",  # Table 3: RSB A3's Mixup / CutMix switching
    "DeiT": "mixup_cutmix",  # Table 4: DeiT's Mixup / CutMix switching
}


def table_rows(table: str) -> list[tuple[str, list[str]]]:
    """Table ``table``'s method rows in the paper's order: (dmsweep's method, the row's cells).

    The rows run from the line ``Table <table>. ...`` to the next table or the first blank line
    after a row; lines of other labels (headers) are passed over.
    """
    lines = paper_lines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Table {table}. "))
    rows: list[tuple[str, list[str]]] = []
    for line in lines[start + 1 :]:
        if line.startswith("Table ") or (rows and not line.strip()):
            break
        label, *cells = line.split("\t")
        if label in ROW_LABELS:
            rows.append((ROW_LABELS[label], cells))
    return rows
