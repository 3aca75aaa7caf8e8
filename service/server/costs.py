"""The plan (``service.plan``) of a submitted sweep, as the API keeps and returns it."""

from __future__ import annotations

import logging
from typing import Any

from service.plan.calibration import planning_table
from service.plan.planner import plan_spec
from service.server.settings import ServiceSettings
from service.spec.model import SweepSpec

log = logging.getLogger("dmsweep.api")

# A submitted sweep's plan keeps its cells up to this many (its totals always): it is stored
# with the sweep and sent with every view of it.
MAX_PLAN_CELLS = 200


def submitted_plan(spec: SweepSpec, settings: ServiceSettings) -> dict[str, Any]:
    """The spec's plan as the API returns it; it never fails a submit.

    Read from ``DMSWEEP_CALIBRATION_TABLE`` and the shipped table, for the device, devices and
    price of the settings. A plan that cannot be made is ``{"error": why}``.
    """
    try:
        table, sources = planning_table(settings.calibration_table, user=False)
        made = plan_spec(
            spec,
            table,
            device=settings.plan_gpu_type,
            devices=settings.plan_gpus,
            price=settings.price_per_gpu_hour,
            tables=sources,
        )
    except Exception as error:  # a plan is advice: the sweep goes ahead without it
        log.warning("sweep %s: no plan: %r", spec.name, error)
        return {"error": f"the plan could not be made: {error}"}
    plan = made.model_dump(mode="json")
    if len(made.cells) > MAX_PLAN_CELLS:
        plan["cells"] = []
        plan["warnings"].append(
            f"{len(made.cells)} cells: only the totals are kept here; `dmsweep plan` shows "
            "each cell"
        )
    return plan
