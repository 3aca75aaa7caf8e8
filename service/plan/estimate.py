"""The arithmetic of a plan: device-hours, wall time and cost from images and images/s.

Pure functions of numbers, so that every figure of ``dmsweep plan`` can be checked by hand.

A *device* is what ``resources.gpus_per_worker`` counts: a GPU (or, for a CPU-only spec,
``gpus_per_worker: 0``, the CPU one worker runs on). A *device-hour* is one device held for an
hour, busy or not: a trial holds ``workers_per_trial x gpus_per_worker`` devices for its whole
run. A fraction packs trials: ``gpus_per_worker: 0.25`` runs 4 trials on one GPU (Ray fits
``floor(1 / gpus_per_worker)``), each holding a quarter of it, so a device-hour is shared by
the 4 trials that run on it together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# 1 / 0.1 is 10.000000000000002 in floating point: a fraction that divides 1 packs exactly.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Packing:
    """How trials sit on devices: trials per device, devices each trial holds."""

    trials_per_device: int
    devices_per_trial: float


def packing(workers_per_trial: int, gpus_per_worker: float) -> Packing:
    """Trials per device and the devices a trial holds, from a spec's ``resources``.

    ``gpus_per_worker`` below 1 shares a GPU among ``floor(1 / gpus_per_worker)`` trials (0.25:
    4), each holding ``1 / trials_per_device`` of it (0.3: 3 trials, a third each: Ray leaves
    the last 0.1 idle). 0 means CPU workers: one device per worker.
    """
    if gpus_per_worker < 0 or workers_per_trial < 1:
        raise ValueError(
            f"need workers >= 1, gpus >= 0; got {workers_per_trial}, {gpus_per_worker}"
        )
    if gpus_per_worker == 0:
        return Packing(1, float(workers_per_trial))
    if gpus_per_worker < 1:
        per_device = math.floor(1 / gpus_per_worker + _EPSILON)
        return Packing(per_device, workers_per_trial / per_device)
    return Packing(1, workers_per_trial * gpus_per_worker)


@dataclass(frozen=True)
class AshaRule:
    """Ray Tune's ASHA as a spec sets it (``search.scheduler``), epochs as its time unit."""

    grace_period: int
    max_t: int
    reduction_factor: float

    def milestones(self) -> list[float]:
        """The rungs, in epochs: ``grace_period x reduction_factor^k``, as Ray's ``_Bracket``.

        Ray makes ``int(log(max_t / grace_period) / log(reduction_factor) + 1)`` rungs.
        """
        count = int(math.log(self.max_t / self.grace_period) / math.log(self.reduction_factor) + 1)
        return [self.grace_period * self.reduction_factor**k for k in range(count)]

    def bound_epochs(self, epochs: int) -> int:
        """Epochs of a trial that no rung stops: ASHA ends every trial at ``max_t``."""
        return min(epochs, self.max_t)

    def expected_epochs(self, epochs: int) -> float:
        """Epochs a trial runs on average: ``1 / reduction_factor`` of them go past each rung.

        That is synchronous successive halving's share; a trial reaching rung ``r`` is judged
        at the first epoch ``>= r`` (``ceil(r)``), and rungs at or past the trial's last epoch
        stop nothing. Asynchronous ASHA lets the first trials at a rung go on (no cutoff yet), so
        with few trials per study the real cost lies between this and ``bound_epochs``.
        """
        end = self.bound_epochs(epochs)
        stops = sorted({math.ceil(m) for m in self.milestones() if math.ceil(m) < end})
        expected, start, share = 0.0, 0, 1.0
        for stop in stops:
            expected += (stop - start) * share
            start, share = stop, share / self.reduction_factor
        return expected + (end - start) * share


@dataclass(frozen=True)
class CellCost:
    """What one cell's trials cost, in hours."""

    trial_hours: float  # one trial run to its last epoch, wall time
    device_hours: float  # every trial run to its last epoch
    expected_device_hours: float  # under the early stopping expectation (= device_hours without)


def cell_cost(
    *,
    trials: int,
    images_per_epoch: int,
    images_per_s: float,
    bound_epochs: float,
    expected_epochs: float,
    devices_per_trial: float,
) -> CellCost:
    """Hours of a cell's ``trials``: each worker trains ``images_per_epoch`` at ``images_per_s``.

    A trial's workers run side by side, so its wall time is one worker's; it holds
    ``devices_per_trial`` devices all that time.
    """
    if images_per_s <= 0:
        raise ValueError(f"images_per_s must be > 0; got {images_per_s}")
    epoch_hours = images_per_epoch / images_per_s / 3600
    trial_hours = bound_epochs * epoch_hours
    return CellCost(
        trial_hours=trial_hours,
        device_hours=trials * trial_hours * devices_per_trial,
        expected_device_hours=trials * expected_epochs * epoch_hours * devices_per_trial,
    )


def usable_devices(
    devices: float, devices_per_trial: float, trials: int, max_concurrent_trials: int | None
) -> float:
    """Devices busy at once: whole trials that fit in ``devices``.

    At most ``max_concurrent_trials`` trials and at most every trial; 0 when one trial needs
    more devices than there are.
    """
    at_once = math.floor(devices / devices_per_trial + _EPSILON)
    if max_concurrent_trials is not None:
        at_once = min(at_once, max_concurrent_trials)
    return min(at_once, trials) * devices_per_trial


def wall_hours(device_hours: float, usable: float, longest_trial_hours: float) -> float | None:
    """A lower bound of the wall time: device-hours over usable devices, or the longest trial.

    The longest trial runs on its own devices, start to end, however many there are.
    Scheduling gaps, trials of unequal length at the end, start-up and evaluation only add to
    it. None when no trial fits (``usable`` 0).
    """
    if usable <= 0:
        return None
    return max(device_hours / usable, longest_trial_hours)
