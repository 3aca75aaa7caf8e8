"""Tracking URIs without their secrets: what is stored or shown, and how a process gets them back.

An MLflow tracking URI may hold a password (``http://user:pw@mlflow:5000``,
``postgresql://user:pw@db/mlflow``) or a token in its query. It is never written to a sweep's
files, a job's command line or an API answer: those get ``redacted(uri)``. The full URI travels
in the environment variable ``TRACKING_URI_ENV`` (the sweep service sets it in each Ray job's
runtime env, which Ray hands to every worker of the job; ``dmsweep run --tracking-uri`` sets it
in its own process), and ``with_credentials`` puts it back when a client is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TRACKING_URI_ENV = "DMSWEEP_TRACKING_URI"
# MLflow prints "View run <name> at: <tracking URI>/#/..." to stdout when a run ends, password
# and all, into the job's log: a process that holds a URI with credentials turns that off.
QUIET_MLFLOW = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
# Query parameters that carry secrets in the URIs MLflow takes (database drivers' passwords,
# cloud SAS tokens, API keys), compared lower-case.
SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pwd", "token", "access_token", "api_key", "apikey", "secret", "sig"}
)


def redacted(uri: str) -> str:
    """``uri`` without user, password and secret query parameters (the rest unchanged)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<a tracking URI that could not be parsed>"
    netloc = parts.netloc.rpartition("@")[2]
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key.lower() not in SECRET_PARAMETERS
    ]
    if netloc == parts.netloc and len(query) == len(parse_qsl(parts.query, True)):
        return uri  # nothing secret: keep the URI exactly as given
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def has_secrets(uri: str) -> bool:
    """Whether ``redacted`` takes something out of ``uri``."""
    return redacted(uri) != uri


def with_credentials(uri: str, env: Mapping[str, str] | None = None) -> str:
    """``uri`` with the credentials ``TRACKING_URI_ENV`` holds for it, else ``uri`` as it is."""
    full = (os.environ if env is None else env).get(TRACKING_URI_ENV)
    if not full or redacted(full) != uri:
        return uri
    if full != uri:
        os.environ[QUIET_MLFLOW] = "true"
    return full


def remember(uri: str) -> str:
    """``uri`` redacted, to store; the full one put where ``with_credentials`` finds it.

    That is this process's environment, which the workers of a local Ray inherit and
    ``service.sweep.ray_setup`` hands to a cluster's.
    """
    if has_secrets(uri):
        os.environ[TRACKING_URI_ENV] = uri
        os.environ[QUIET_MLFLOW] = "true"
    return redacted(uri)
