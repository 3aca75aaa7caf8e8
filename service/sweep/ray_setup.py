"""The options a sweep starts or joins Ray with (``ray.init``).

A local Ray gets one ``trial_slot`` per trial that may run at once (taken by the drivers of
several-worker trials), a dashboard on a free port,
and no log forwarding (each trial has its own log). The workers are told where their own
cluster's State API is: ``service.sweep.ray_workarounds.state_api_env`` says why.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from service.sweep.ray_workarounds import state_api_env
from service.tracking.uri import TRACKING_URI_ENV

# Ray Train's controller polls its workers this often (default 2 s) and each ``report`` waits
# for a poll: 0.2 s saved ~1.5-1.9 s per 1-epoch trial here, more with more epochs
# (bench/sweep_overhead.py).
HEALTH_CHECK_INTERVAL_S = "0.2"
# How long Tune waits for a stopped trial's thread before it hands the trial's process to the
# next trial (service.sweep.engine._reuse_trial_processes); Ray's default, 2 s, is shorter than
# a trial's unwinding may take (its MLflow run closed, its log written).
REUSE_WAIT_S = "60"
SLOT = "trial_slot"  # one per several-worker trial that may run at once (engine.py)


def free_local_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _is_gcs_address(address: str) -> bool:
    """``host:port``, as opposed to ``auto``, ``local`` or a ``ray://`` client address."""
    host, _, port = address.rpartition(":")
    return bool(host) and "://" not in address and port.isdigit()


def _job_env_vars() -> dict[str, str]:
    """The variables a Ray job's runtime env gives its driver and workers (none outside a job)."""
    config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return (config.get("runtime_env") or {}).get("env_vars") or {}


def ray_init_options(
    address: str | None = None,
    *,
    slots: int = 1,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``ray.init``: a local Ray of this process's own, or a cluster.

    ``address`` None or ``"local"`` starts a local Ray with ``slots`` trial slots (and
    ``num_cpus`` logical CPUs, default: the machine's); ``"auto"`` means ``$RAY_ADDRESS``
    when set (as in a Ray Job's driver), else Ray's own discovery; anything else is the
    cluster's GCS address.
    """
    interval = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    env: dict[str, str] = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval,
        "TUNE_FUNCTION_THREAD_TIMEOUT_S": REUSE_WAIT_S,
    }
    # The tracking URI's credentials reach the trials through their environment only
    # (service.tracking.uri). A job of the sweep service has them in its runtime env already,
    # and Ray refuses a variable that the job's and ray.init's runtime envs both name.
    tracking_uri = os.environ.get(TRACKING_URI_ENV)
    if tracking_uri and TRACKING_URI_ENV not in _job_env_vars():
        env[TRACKING_URI_ENV] = tracking_uri
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": False,  # each trial has its own log in the sweep folder
        "include_dashboard": True,  # the State API the placement group cleaner asks is in it
    }
    if address in (None, "local"):
        # "local": a Ray of its own. Without it, ray.init() joins whatever cluster the last
        # `ray start` on this machine recorded in /tmp/ray/ray_current_cluster.
        port = free_local_port()  # 8265, Ray's default, may belong to another Ray here
        options |= {
            "address": "local",
            "resources": {SLOT: slots},
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
        }
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        env |= state_api_env(dashboard_port=port)
        return options
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or "auto"
    options["address"] = address
    if _is_gcs_address(address):
        env |= state_api_env(gcs_address=address)
    return options
