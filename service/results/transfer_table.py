"""A sweep's transfer-learning table (Tables 6 and 9) beside the paper's numbers; its DM gains.

Table 6 reports, per transfer algorithm and fine-grained data set with 15%, 30% and 50% of the
labels (Sec. 4.3, ResNet-50), the best top-1 (Sec. 4: "the max top-1 Acc" of semi-supervised
settings), mean ± std over three seeds; Table 9 ablates the asymmetric strategy (AS) and DM(CE)
of Self-Tuning on CUB-200 with ResNet-18, the same columns without a ±. Self-Tuning's code keeps
no EMA of the weights, so our number is ``top1_best`` (``trainers.vocabulary.TRANSFER_METRIC``).

The table is built as Table 7's (``ssl_table.build_table``: mean ± std (ddof=1) over seeds,
failures counted, the paper's number of the trials' recipe, control cells after their base row),
with rows of their own kind, ``TransferRow``: (algorithm, method, loss) as Table 7's, plus

* ``as_side``, the AS term's side of lambda (the grid's ``as_side`` axis): a trial row's own
  ``as_side`` where it has one, else the suffix its cell id carries (``/as_labelled_major``,
  ``/as_none``), else the default ``labelled_minor``;
* ``labelled_mixup``, Self-Tuning's extra mixing of labelled images (``transfer.labelled_mixup``
  of the trial's configuration): a trial row's ``labelled_mixup``, else ``none``.

Those two are what tell Table 9's rows apart from Table 6's: "+MCE+AS(λ≤0.5)" and Table 6's
"Self-Tuning+Mixup" are both self_tuning / mixup / mce on the labelled_minor side, the first
with ``labelled_mixup: mce``. The two tables' columns also differ (ResNet-50 against ResNet-18),
so the paper's numbers never meet across them; the keys keep a Table 6 setting run on ResNet-18
(or a Table 9 one on ResNet-50) from taking the other table's label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.results.paper import load_paper_results
from service.results.pivot import is_control_row
from service.results.ssl_table import (
    ALGORITHM_NAMES,
    SemiSupervisedTable,
    SslRow,
    build_table,
    is_transfer,
    made_label,
    order_index,
    paper_numbers,
)
from trainers.vocabulary import AS_SIDES, DEFAULT_AS_SIDE, TRANSFER_METRIC

NO_LABELLED_MIXUP = "none"
LABELLED_MIXUPS = (NO_LABELLED_MIXUP, "mce", "dm_ce")
"""``transfer.labelled_mixup``'s values (``trainers.config.TransferSettings``), in order."""

TRANSFER_NAMES = {
    **ALGORITHM_NAMES,
    "fine_tuning": "Fine-Tuning",
    "bss": "BSS",
    "co_tuning": "Co-Tuning",
    "self_tuning": "Self-Tuning",
}
"""How Table 6 names each transfer algorithm."""

RowKey = tuple[str, str, str, str, str]
"""(algorithm, method, loss, as_side, labelled_mixup)."""

_MINOR = DEFAULT_AS_SIDE
TABLE6_ROWS: dict[RowKey, str] = {
    ("fine_tuning", "vanilla", "ce", _MINOR, "none"): "Fine-Tuning",
    ("fine_tuning", "mixup", "dm_ce", _MINOR, "none"): "Fine-Tuning+DM",
    ("bss", "vanilla", "ce", _MINOR, "none"): "BSS",
    ("co_tuning", "vanilla", "ce", _MINOR, "none"): "Co-Tuning",
    ("co_tuning", "mixup", "dm_ce", _MINOR, "none"): "Co-Tuning+DM",
    ("self_tuning", "vanilla", "ce", _MINOR, "none"): "Self-Tuning",
    ("self_tuning", "mixup", "mce", _MINOR, "none"): "Self-Tuning+Mixup",
    ("self_tuning", "mixup", "dm_ce", _MINOR, "none"): "Self-Tuning+DM",
}
"""Table 6's rows in its order. "+DM" is DM(CE) with AS on Mixup (Sec. 4.3: "we adopt DM(CE) and
AS to Fine-Tuning, Co-Tuning, and Self-Tuning using Mixup"); "+Mixup" is the AS term with MCE.
A vanilla cell has no AS term: its as_side is the default (``TrainConfig`` allows no other)."""

TABLE9_ROWS: dict[RowKey, str] = {
    ("self_tuning", "vanilla", "ce", _MINOR, "none"): "Self-Tuning",
    ("self_tuning", "mixup", "mce", "none", "none"): "Self-Tuning +MCE",
    ("self_tuning", "mixup", "mce", "labelled_major", "mce"): "Self-Tuning +MCE+AS(λ≥0.5)",
    ("self_tuning", "mixup", "mce", _MINOR, "mce"): "Self-Tuning +MCE+AS(λ≤0.5)",
    ("self_tuning", "mixup", "dm_ce", _MINOR, "mce"): "Self-Tuning +DM(CE)+AS(λ≤0.5)",
}
"""Table 9's rows in its order: "+MCE" mixes labelled images among themselves (no AS term); the
"+AS" rows add the AS term on the side of lambda named, beside that labelled MCE."""

TRANSFER_ROWS: dict[RowKey, str] = {**TABLE6_ROWS, **TABLE9_ROWS}
"""Every row of Tables 6 and 9, Table 6's first (Self-Tuning, in both, keeps its place there)."""


@dataclass(frozen=True)
class TransferRow(SslRow):
    """One row: (algorithm, method, loss) with the AS side and Self-Tuning's labelled mixing."""

    as_side: str = field(default=DEFAULT_AS_SIDE, kw_only=True)
    labelled_mixup: str = field(default=NO_LABELLED_MIXUP, kw_only=True)

    @property
    def key(self) -> RowKey:
        """(algorithm, method, loss, as_side, labelled_mixup)."""
        return (*self.combination, self.as_side, self.labelled_mixup)

    @property
    def label(self) -> str:
        """Table 6's or 9's name, else one made alike (``BSS+DM (CutMix)``) with the settings.

        A setting off the default is named after it (``[as_side labelled_major]``,
        ``[labelled mce]``) so that no two rows share a label.
        """
        label = TRANSFER_ROWS.get(self.key)
        if label is None:
            label = made_label(*self.combination, names=TRANSFER_NAMES)
            if self.as_side != DEFAULT_AS_SIDE:
                label += f" [as_side {self.as_side}]"
            if self.labelled_mixup != NO_LABELLED_MIXUP:
                label += f" [labelled {self.labelled_mixup}]"
        return f"{label} (control)" if self.control else label

    def order(self) -> tuple[int, ...]:
        """Table 6's rows, then Table 9's, then the others by their five keys; controls after."""
        known = list(TRANSFER_ROWS)
        return (
            known.index(self.key) if self.key in known else len(known),
            *SslRow(*self.combination).order()[1:4],
            order_index(AS_SIDES, self.as_side),
            order_index(LABELLED_MIXUPS, self.labelled_mixup),
            self.control,
        )


AS_SUFFIX = "as_"
"""A cell id's part that names a side other than the default: ``.../mce/as_labelled_major``."""


def as_side(row: Mapping[str, Any]) -> str:
    """A row's AS side: its ``as_side``, else its cell id's ``as_<side>`` part, else the default."""
    side = row.get("as_side")
    if isinstance(side, str) and side:
        return side
    for part in str(row.get("cell") or "").split("/"):
        if part.startswith(AS_SUFFIX) and part.removeprefix(AS_SUFFIX) in AS_SIDES:
            return part.removeprefix(AS_SUFFIX)
    return DEFAULT_AS_SIDE


def transfer_row(row: Mapping[str, Any]) -> TransferRow:
    """The table row of a trial row or a paper row (``table6.csv``, ``table9.csv``)."""
    mixup = row.get("labelled_mixup")
    return TransferRow(
        str(row["algorithm"]),
        str(row["method"]),
        str(row["loss"]),
        is_control_row(row),
        as_side=as_side(row),
        labelled_mixup=mixup if isinstance(mixup, str) and mixup else NO_LABELLED_MIXUP,
    )


def _row(key: RowKey) -> TransferRow:
    algorithm, method, loss, side, mixup = key
    return TransferRow(algorithm, method, loss, as_side=side, labelled_mixup=mixup)


def _table6(label: str) -> TransferRow:
    return _row(next(key for key, name in TABLE6_ROWS.items() if name == label))


def _table9(label: str) -> TransferRow:
    return _row(next(key for key, name in TABLE9_ROWS.items() if name == label))


TRANSFER_GAINS: tuple[tuple[SslRow, SslRow], ...] = (
    (_table6("Fine-Tuning"), _table6("Fine-Tuning+DM")),
    (_table6("Co-Tuning"), _table6("Co-Tuning+DM")),
    (_table6("Self-Tuning"), _table6("Self-Tuning+DM")),
    (_table6("Self-Tuning+Mixup"), _table6("Self-Tuning+DM")),
    (_table9("Self-Tuning +MCE"), _table9("Self-Tuning +DM(CE)+AS(λ≤0.5)")),
)
"""(base, DM): the gains the paper states. Sec. 4.3: "DM(CE) and AS steadily improve Mixup and
the baselines", with ranges on Cars that are the three baselines' (Fine-Tuning, Co-Tuning,
Self-Tuning) differences, nearly (search_spaces/paper_results/README.md); Sec. 4.5 (3): "using
DM(CE) and AS(λ≤0.5) further improves MCE" (Table 9)."""


def transfer_table(
    rows: Iterable[Mapping[str, Any]],
    paper: Iterable[Mapping[str, Any]] | None = None,
    metric: str = TRANSFER_METRIC,
) -> SemiSupervisedTable:
    """The transfer trials of ``rows`` in the shape of Tables 6 and 9, mean ± std over seeds.

    ``paper`` is the paper's numbers as ``load_paper_results`` gives them; None loads the
    repository's (pass ``[]`` for none). Other trials are left out. See the module docstring.
    """
    numbers = paper_numbers(
        load_paper_results() if paper is None else paper, keep=is_transfer, row_of=transfer_row
    )
    transfer = [row for row in rows if is_transfer(row)]
    return build_table(transfer, numbers, metric, transfer_row, TRANSFER_GAINS)
