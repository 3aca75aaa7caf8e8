"""The client side of the sweep service, for ``dmsweep submit / status / cancel / logs / report``.

Errors are raised as ``ServiceError`` carrying the server's own words (its ``detail``), so the
CLI shows what the server said rather than an HTTP library's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class ServiceError(RuntimeError):
    """A request the server refused (or could not be reached); ``status`` 0 when unreachable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(detail, list):  # 422: one entry per failing field
        return "\n".join(f"{d.get('loc', '')}: {d.get('msg', d)}" for d in detail)
    return str(detail)


class ServiceClient:
    """Calls to one server with one token."""

    def __init__(self, server: str, token: str | None, timeout_s: float = 60) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout_s)

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **options)
        except httpx.HTTPError as error:
            raise ServiceError(0, f"the server {self.server} did not answer: {error}") from None
        if response.status_code >= 400:
            raise ServiceError(response.status_code, _detail(response))
        return response

    def submit(self, spec_file: Path, idempotency_key: str | None = None) -> dict[str, Any]:
        """Send a spec file (YAML, or JSON by its suffix); the new sweep."""
        kind = "application/json" if spec_file.suffix == ".json" else "application/yaml"
        headers = {"Content-Type": kind}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self._request(
            "POST", "/sweeps", content=spec_file.read_bytes(), headers=headers
        ).json()

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep."""
        return self._request("GET", "/sweeps").json()

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """One sweep."""
        return self._request("GET", f"/sweeps/{sweep_id}").json()

    def cancel(self, sweep_id: str) -> dict[str, Any]:
        """Stop a sweep."""
        return self._request("POST", f"/sweeps/{sweep_id}/cancel").json()

    def resume(self, sweep_id: str) -> dict[str, Any]:
        """Continue a failed or cancelled sweep."""
        return self._request("POST", f"/sweeps/{sweep_id}/resume").json()

    def report(self, sweep_id: str) -> str:
        """The paper-style table (Markdown)."""
        return self._request("GET", f"/sweeps/{sweep_id}/report").text

    def logs(self, sweep_id: str, trial: str | None = None) -> str:
        """The sweep's job output, or one trial's log."""
        params = {"trial": trial} if trial else None
        return self._request("GET", f"/sweeps/{sweep_id}/logs", params=params).text
