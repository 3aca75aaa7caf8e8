"""The sweep service's configuration, from environment variables (``dmsweep serve``).

- ``DMSWEEP_DATABASE_URL``: SQLAlchemy URL of the sweep store (default: SQLite,
  ``<storage root>/service.db``; PostgreSQL in compose and Kubernetes).
- ``DMSWEEP_RAY_ADDRESS``: the Ray dashboard / job server URL (default http://127.0.0.1:8265).
- ``DMSWEEP_MLFLOW_URI``: the MLflow tracking URI of every sweep (default: a SQLite store under
  the storage root).
- ``DMSWEEP_DATA_ROOTS``: colon-separated folders (or bucket prefixes, ``s3://bucket/prefix``)
  a spec's data and weights may come from (weights: folders only).
- ``DMSWEEP_STORAGE_ROOT``: where sweep folders go, the same path on the API and every Ray node
  (default ./runs), or a bucket prefix (``s3://bucket/prefix``; then the two stores above must
  be set: no SQLite file lives on a bucket).
- ``DMSWEEP_API_TOKEN`` or ``DMSWEEP_API_TOKEN_FILE``: the bearer token clients send (none:
  ``dmsweep serve`` refuses to start unless told ``--insecure-no-auth``).
- ``DMSWEEP_POLL_S``: seconds between reads of the Ray jobs' states (default 2).
- ``DMSWEEP_MLFLOW_PUBLIC_URL``: the MLflow UI as users reach it, for the run links the API
  returns (default: the tracking URI when it is a server, without its credentials).
- ``DMSWEEP_ALLOW_DOWNLOADS``: ``1`` lets specs use ``pretrained: true`` and hub models (default
  off: the workers download nothing a spec asks for; ``service.spec.downloads``).
- ``DMSWEEP_TRUSTED_PROXIES``: comma-separated addresses or networks of the reverse proxies in
  front of the service; only their ``X-Forwarded-For`` names the client (default: none).
- ``DMSWEEP_AUTH_FAILURES`` / ``DMSWEEP_AUTH_WINDOW_S``: wrong tokens a client address may send
  per window before it gets 429 (default 10 per 60 s).
- ``DMSWEEP_MAX_ACTIVE_SWEEPS``: sweeps that may be queued, submitted or running at once;
  a submit beyond it gets 429 with ``Retry-After`` (default 10).
- ``DMSWEEP_CALIBRATION_TABLE``: the calibration table (``dmsweep calibrate``) the plan of
  every submitted sweep reads, before the one dmsweep ships (default: the shipped one alone).
- ``DMSWEEP_PLAN_GPU_TYPE``, ``DMSWEEP_PLAN_GPUS``, ``DMSWEEP_PRICE_PER_GPU_HOUR``: the device
  those plans are for, how many the cluster has (for the wall time) and the price of one
  device-hour (for the cost); as ``dmsweep plan``'s ``--gpu-type``, ``--gpus`` and
  ``--price-per-gpu-hour``.
- ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``: Ray's own token,
  sent to the job server unless ``RAY_AUTH_MODE=disabled`` (``_ray_token``).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath, absolute

MIN_TOKEN_LENGTH = 32  # secrets.token_urlsafe(32) gives 43 characters
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting of the service is missing or wrong; the message names the variable."""


def read_token(env: Mapping[str, str], value_var: str, file_var: str) -> str | None:
    """A token from ``value_var``, else from the file ``file_var`` names; None when neither."""
    if env.get(value_var):
        return env[value_var].strip()
    if env.get(file_var):
        path = Path(env[file_var])
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise SettingsError(f"{file_var}={path}: {error.strerror or error}") from None
        if not token:
            raise SettingsError(f"{file_var}={path}: the file is empty")
        return token
    return None


def check_token(token: str) -> None:
    """Refuse an API token short enough to guess (``SettingsError`` saying how to make one)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise SettingsError(
            f"the API token (DMSWEEP_API_TOKEN or DMSWEEP_API_TOKEN_FILE) has {len(token)} "
            f"characters; it needs at least {MIN_TOKEN_LENGTH}. Make one with: python -c "
            '"import secrets; print(secrets.token_urlsafe(32))"'
        )


def _networks(env: Mapping[str, str], name: str) -> tuple[IpNetwork, ...]:
    networks = []
    for item in (env.get(name) or "").split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise SettingsError(
                    f"{name} must list IP addresses or networks (10.0.0.0/8), comma-separated; "
                    f"got {item.strip()!r}"
                ) from None
    return tuple(networks)


def _number(env: Mapping[str, str], name: str, default: float, least: float) -> float:
    text = env.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = float("nan")
    if not value >= least:  # also NaN
        raise SettingsError(f"{name} must be a number >= {least:g}; got {text!r}")
    return value


def _optional_number(env: Mapping[str, str], name: str) -> float | None:
    """A finite number >= 0 when the variable is set, else None."""
    if not (env.get(name) or "").strip():
        return None
    value = _number(env, name, 0.0, 0)
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number >= 0; got {env[name]!r}")
    return value


def _optional_count(env: Mapping[str, str], name: str) -> int | None:
    """A whole number >= 1 when the variable is set, else None."""
    return _count(env, name, 0) or None


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise SettingsError(f"{name} must be a whole number >= 1; got {env[name]!r}")
    return int(text)


def _switch(env: Mapping[str, str], name: str) -> bool:
    text = (env.get(name) or "0").strip().lower()
    if text not in ("0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"{name} must be 1 or 0 (true / false); got {env[name]!r}")
    return text in ("1", "true", "yes")


def _ray_token(env: Mapping[str, str]) -> str | None:
    """Ray's token where Ray looks: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ``~/.ray/auth_token``.

    Read unless ``RAY_AUTH_MODE=disabled``: Ray 2.60's ``ray start --head`` turns token auth on
    by itself when one of those holds a token (``ray get-auth-token --generate`` writes the
    file), and ``ray.init()`` makes the file and turns it on too, so a service that waited for
    ``RAY_AUTH_MODE=token`` left every sweep queued with "Missing authentication token". A head
    without auth ignores the token. ``RAY_AUTH_MODE=token`` without any token is refused here,
    naming where to put one.
    """
    mode = (env.get("RAY_AUTH_MODE") or "").strip().lower()
    if mode not in ("", "token", "disabled"):
        raise SettingsError(
            f"RAY_AUTH_MODE must be token or disabled; got {env['RAY_AUTH_MODE']!r}"
        )
    if mode == "disabled":
        return None
    token = read_token(env, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    # Ray's own default; HOME as this environment has it (Path.home() when it has none).
    default = Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token"
    if token is None and default.is_file():
        try:
            token = default.read_text().strip() or None
        except OSError as error:
            raise SettingsError(f"Ray's token file {default}: {error.strerror or error}") from None
    if token is None and mode == "token":
        raise SettingsError(
            "RAY_AUTH_MODE=token, but there is no Ray token: set RAY_AUTH_TOKEN, or "
            f"RAY_AUTH_TOKEN_PATH to a file holding it, or put it in {default} (the token the "
            "Ray head was started with)"
        )
    return token


def _root(text: str, name: str) -> AnyPath:
    """A root folder (absolute) or bucket prefix; a SettingsError naming ``name`` if invalid."""
    try:
        return absolute(text.strip())
    except ValueError as error:
        raise SettingsError(f"{name}: {error}") from None


@dataclass(frozen=True)
class ServiceSettings:
    """Where the service keeps its sweeps and whom it talks to."""

    database_url: str
    ray_address: str
    storage_root: AnyPath
    data_roots: tuple[AnyPath, ...] = ()
    mlflow_uri: str | None = field(default=None, repr=False)  # may hold a password
    api_token: str | None = field(default=None, repr=False)
    ray_token: str | None = field(default=None, repr=False)
    poll_s: float = 2.0
    mlflow_public_url: str | None = None
    allow_downloads: bool = False
    trusted_proxies: tuple[IpNetwork, ...] = ()
    auth_failures: int = 10
    auth_window_s: float = 60.0
    max_active_sweeps: int = 10
    calibration_table: Path | None = None
    plan_gpu_type: str | None = None
    plan_gpus: float | None = None
    price_per_gpu_hour: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read the ``DMSWEEP_*`` variables (and Ray's token variables)."""
        env = os.environ if env is None else env
        storage_root = _root(env.get("DMSWEEP_STORAGE_ROOT") or "runs", "DMSWEEP_STORAGE_ROOT")
        roots = tuple(
            _root(p, "DMSWEEP_DATA_ROOTS")
            # ':' separates roots, except the one of a scheme ('s3://...')
            for p in re.split(r":(?!//)", env.get("DMSWEEP_DATA_ROOTS") or "")
            if p.strip()
        )
        if isinstance(storage_root, BucketPath):
            missing = [
                name for name in ("DMSWEEP_DATABASE_URL", "DMSWEEP_MLFLOW_URI") if not env.get(name)
            ]
            if missing:
                raise SettingsError(
                    f"DMSWEEP_STORAGE_ROOT={storage_root} is a bucket, where the default "
                    f"SQLite stores cannot live: set {' and '.join(missing)} (PostgreSQL, an "
                    "MLflow server)"
                )
        try:
            poll_s = float(env.get("DMSWEEP_POLL_S") or 2.0)
        except ValueError:
            raise SettingsError(
                f"DMSWEEP_POLL_S must be a number of seconds; got {env['DMSWEEP_POLL_S']!r}"
            ) from None
        return cls(
            database_url=env.get("DMSWEEP_DATABASE_URL")
            or f"sqlite:///{storage_root / 'service.db'}",
            ray_address=env.get("DMSWEEP_RAY_ADDRESS") or "http://127.0.0.1:8265",
            storage_root=storage_root,
            data_roots=roots,
            mlflow_uri=env.get("DMSWEEP_MLFLOW_URI") or None,
            api_token=read_token(env, "DMSWEEP_API_TOKEN", "DMSWEEP_API_TOKEN_FILE"),
            ray_token=_ray_token(env),
            poll_s=poll_s,
            mlflow_public_url=env.get("DMSWEEP_MLFLOW_PUBLIC_URL") or None,
            allow_downloads=_switch(env, "DMSWEEP_ALLOW_DOWNLOADS"),
            trusted_proxies=_networks(env, "DMSWEEP_TRUSTED_PROXIES"),
            auth_failures=int(_number(env, "DMSWEEP_AUTH_FAILURES", 10, 1)),
            auth_window_s=_number(env, "DMSWEEP_AUTH_WINDOW_S", 60.0, 1),
            max_active_sweeps=_count(env, "DMSWEEP_MAX_ACTIVE_SWEEPS", 10),
            calibration_table=(
                Path(env["DMSWEEP_CALIBRATION_TABLE"]).expanduser()
                if env.get("DMSWEEP_CALIBRATION_TABLE")
                else None
            ),
            plan_gpu_type=env.get("DMSWEEP_PLAN_GPU_TYPE") or None,
            plan_gpus=_optional_count(env, "DMSWEEP_PLAN_GPUS"),
            price_per_gpu_hour=_optional_number(env, "DMSWEEP_PRICE_PER_GPU_HOUR"),
        )
