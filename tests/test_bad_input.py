"""Bad input is refused up front, through the CLI and through the API, and creates nothing.

The cases are the README's troubleshooting table (tests/support/bad_inputs.py). What only shows
when data is read (an unreadable image, a pickle of the wrong shape) and what needs a cluster
(more GPUs than it has) are in tests/integration/test_bad_input_runtime.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.support.api_server import AUTH, YAML, Served
from tests.support.bad_inputs import CASES, README_CASES, Case, changed, flat

REPO = Path(__file__).resolve().parents[1]


def cli_refuses(tmp_path: Path, text: str, *words: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    storage = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(spec), "--storage-path", str(storage)])
    output = flat(result.output)
    assert result.exit_code == 2, output[:2000]
    for word in words:
        assert word in output, (word, output[:2000])
    assert not storage.exists() or not any(storage.iterdir())


def api_refuses(served: Served, text: str, status: int, *words: str) -> None:
    before = served.created()
    with httpx.Client(base_url=served.url, timeout=60) as client:
        response = client.post("/sweeps", content=text.encode(), headers=YAML)
    assert response.status_code == status, response.text[:2000]
    detail = response.json()["detail"]
    if isinstance(detail, list):
        detail = "; ".join(f"{d['loc']}: {d['msg']}" for d in detail)
    for word in words:
        assert word in detail, (word, detail)
    assert served.created() == before


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_cli_refuses(tmp_path, case: Case):
    cli_refuses(tmp_path, case.text, *case.words)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_api_refuses(served, case: Case):
    api_refuses(served, case.text, case.status, *case.words)


def test_a_data_root_that_does_not_exist(tmp_path, served):
    missing = tmp_path / "nowhere"
    text = changed(
        (("grid", "dataset"), ["cifar10"]), (("data",), {"cifar10": {"root": str(missing)}})
    )
    cli_refuses(tmp_path, text, f"data folder {missing} does not exist")
    under_root = served.data / "not-there"
    text = changed(
        (("grid", "dataset"), ["cifar10"]), (("data",), {"cifar10": {"root": str(under_root)}})
    )
    api_refuses(served, text, 422, "data.cifar10", f"data folder {under_root} does not exist")


def test_a_path_outside_the_data_roots(served):
    text = changed((("data",), {"synthetic": {"root": "/etc"}}))
    api_refuses(served, text, 422, "data.synthetic.root", "must lie under", str(served.data))


def test_requests_without_or_with_a_wrong_token(served):
    with httpx.Client(base_url=served.url) as client:
        before = served.created()
        body = changed().encode()
        missing = client.post("/sweeps", content=body, headers={"Content-Type": "text/yaml"})
        assert missing.status_code == 401
        assert "Authorization: Bearer" in missing.json()["detail"]
        wrong = client.post(
            "/sweeps",
            content=body,
            headers={"Content-Type": "text/yaml", "Authorization": "Bearer guess"},
        )
        assert wrong.status_code == 403 and "not valid" in wrong.json()["detail"]
        assert served.created() == before


def test_cancel_of_an_unknown_sweep_through_the_cli(served):
    result = CliRunner().invoke(
        app,
        ["cancel", "nope-1", "--server", served.url],
        env={"DMSWEEP_API_TOKEN": AUTH["Authorization"][7:]},
    )
    assert result.exit_code == 1
    assert "server (404): no sweep 'nope-1'" in flat(result.output)


def test_the_readme_lists_every_case():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Troubleshooting") :]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")}
    missing = [case for case in README_CASES if case not in rows]
    assert not missing, f"README's troubleshooting table lacks rows for {missing}"
