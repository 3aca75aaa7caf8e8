"""The sweep service's configuration, from environment variables (``dmsweep serve``).

- ``DMSWEEP_DATABASE_URL``: SQLAlchemy URL of the sweep store (default: SQLite,
  ``<storage root>/service.db``; PostgreSQL in compose and Kubernetes).
- ``DMSWEEP_RAY_ADDRESS``: the Ray dashboard / job server URL (default http://127.0.0.1:8265).
- ``DMSWEEP_MLFLOW_URI``: the MLflow tracking URI of every sweep (default: a SQLite store under
  the storage root).
- ``DMSWEEP_DATA_ROOTS``: colon-separated folders a spec's data and weights may come from.
- ``DMSWEEP_STORAGE_ROOT``: where sweep folders go, the same path on the API and every Ray node
  (default ./runs).
- ``DMSWEEP_API_TOKEN`` or ``DMSWEEP_API_TOKEN_FILE``: the bearer token clients send (none:
  ``dmsweep serve`` refuses to start unless told ``--insecure-no-auth``).
- ``DMSWEEP_POLL_S``: seconds between reads of the Ray jobs' states (default 2).
- ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``: Ray's own token, sent to the job server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


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


def _ray_token(env: Mapping[str, str]) -> str | None:
    """Ray's token as Ray's own clients find it: the variables, then ``~/.ray/auth_token``."""
    token = read_token(env, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    default = Path.home() / ".ray" / "auth_token"
    if token is None and env.get("RAY_AUTH_MODE") == "token" and default.is_file():
        token = default.read_text().strip() or None
    return token


@dataclass(frozen=True)
class ServiceSettings:
    """Where the service keeps its sweeps and whom it talks to."""

    database_url: str
    ray_address: str
    storage_root: Path
    data_roots: tuple[Path, ...] = ()
    mlflow_uri: str | None = None
    api_token: str | None = field(default=None, repr=False)
    ray_token: str | None = field(default=None, repr=False)
    poll_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read the ``DMSWEEP_*`` variables (and Ray's token variables)."""
        env = os.environ if env is None else env
        storage_root = Path(env.get("DMSWEEP_STORAGE_ROOT") or "runs").expanduser().resolve()
        roots = tuple(
            Path(p).expanduser().resolve()
            for p in (env.get("DMSWEEP_DATA_ROOTS") or "").split(":")
            if p.strip()
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
        )
