"""``dmsweep studies``: optuna-dashboard on a tuning sweep's studies, looked at in Chromium.

The sweep folders are made by hand (spec, ``sweep.json`` and an ``optuna.db`` of a few trials
added with Optuna itself): the command reads only those. Its refusals run in this process; the
dashboard is the real command in a process of its own, ended by its session id.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from playwright.sync_api import expect
from typer.testing import CliRunner

from service.cli import app
from service.results.folder import SweepFolder
from service.results.records import SweepInfo, SweepStatus
from service.sweep.searcher import STORAGE_FILE_VAR, STORAGE_VAR
from tests.support.browser import headless_chromium
from tests.support.ports import free_port
from tests.support.processes import end_session, session_processes, start_session
from tests.support.specs import tiny_spec

CELL = "synthetic/smallnet/mixup/dm_ce"
SEARCH = {"parameters": {"eta": {"low": 0.01, "high": 4.0}}, "sampler": "tpe", "num_samples": 5}
START_S = 120  # the command imports the spec model (torch) before the dashboard starts
TIMEOUT_MS = 30_000  # a loaded 2-core machine renders the dashboard slowly


@pytest.fixture(autouse=True)
def no_database_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_VAR, raising=False)
    monkeypatch.delenv(STORAGE_FILE_VAR, raising=False)


def sweep_folder(root: Path, sweep_id: str, search: dict | None = SEARCH) -> SweepFolder:
    """A sweep folder as the engine leaves it, without trials: a DM(CE) spec, tuned or not."""
    folder = SweepFolder(root / sweep_id)
    folder.path.mkdir(parents=True)
    spec = tiny_spec(name="studies", grid={**tiny_spec()["grid"], "loss": ["dm_ce"]})
    if search is not None:
        spec["search"] = search
    folder.spec_file.write_text(yaml.safe_dump(spec))
    folder.write_state(SweepInfo(sweep_id, "studies", SweepStatus.SUCCEEDED))
    return folder


def add_study(storage: str, name: str, values: list[float | None]) -> optuna.Study:
    """A study of eta whose trials have these values (None: a pruned trial)."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    space = {"eta": FloatDistribution(0.01, 4.0)}
    for index, value in enumerate(values):
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        params = {"eta": 0.1 + 0.5 * index}
        study.add_trial(create_trial(state=state, value=value, params=params, distributions=space))
    return study


def studies(*args: str) -> tuple[int, str]:
    """``dmsweep studies ARGS`` in this process (only where it refuses: it never serves here)."""
    result = CliRunner().invoke(app, ["studies", *args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.stdout.split())


def test_studies_refuses_what_has_no_studies(tmp_path):
    code, out = studies("no-such-sweep", "--storage-path", str(tmp_path))
    assert code == 2 and "no sweep 'no-such-sweep'" in out

    grid = sweep_folder(tmp_path, "grid-1", search=None)
    code, out = studies(str(grid.path))
    assert code == 2 and "no search section" in out and "dmsweep tune" in out

    tuned = sweep_folder(tmp_path, "tuned-1")
    code, out = studies("tuned-1", "--storage-path", str(tmp_path))
    assert code == 2 and "no optuna.db" in out and STORAGE_VAR in out
    assert not (tuned.path / "optuna.db").exists(), "no database may be made by looking"

    # An optuna.db with another sweep's studies only.
    add_study(tuned.optuna_url, f"tuned-2:{CELL}", [0.5])
    code, out = studies(str(tuned.path))
    assert code == 2 and "no Optuna study of sweep tuned-1 (named tuned-1:<cell id>)" in out


def test_studies_reads_the_variable_when_the_folder_has_no_database(tmp_path, monkeypatch):
    folder = sweep_folder(tmp_path, "tuned-1")
    monkeypatch.setenv(STORAGE_VAR, "mysql://user:hunter2@db/optuna")
    code, out = studies(str(folder.path))
    assert code == 2 and STORAGE_VAR in out and "postgresql+psycopg" in out
    assert "hunter2" not in out
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv(STORAGE_VAR, f"sqlite:///{elsewhere}")
    code, out = studies(str(folder.path))
    assert code == 2 and "is not a file here" in out and not elsewhere.exists()


def wait_for_port(port: int, process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dmsweep studies ended (rc {process.returncode})")
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise AssertionError(f"nothing listened on port {port} after {timeout_s} s")


def named(pattern: str) -> re.Pattern:
    """A pattern for Playwright's ``name=``, whose selector syntax ends a regex at any ``/``."""
    return re.compile(pattern.replace("/", r"\/"))


def test_the_dashboard_lists_the_sweeps_studies_in_chromium(tmp_path):
    folder = sweep_folder(tmp_path, "tuned-1")
    add_study(folder.optuna_url, f"tuned-1:{CELL}", [0.2, 0.6, None, 0.4, 0.9])
    add_study(folder.optuna_url, "tuned-1:synthetic/smallnet/cutmix/dm_ce", [0.3, None, 0.5])
    # What the page must show: the trials as Optuna reads them.
    trials = optuna.load_study(study_name=f"tuned-1:{CELL}", storage=folder.optuna_url).trials
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    port = free_port()
    log = tmp_path / "studies.log"
    command = ["studies", str(folder.path), "--port", str(port)]
    process = start_session([sys.executable, "-m", "service.cli", *command], log)
    try:
        wait_for_port(port, process, START_S)
        printed = log.read_text()
        assert f"tuned-1:{CELL}" in printed and "the sweep folder's optuna.db" in printed
        # The URL reached the dashboard through its environment, not its command line.
        for pid in session_processes(process.pid):
            assert "optuna.db" not in Path(f"/proc/{pid}/cmdline").read_text()
        with headless_chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/dashboard", wait_until="load")
            # One card per study, "<study id>. <name> Direction: MAXIMIZE".
            card = page.get_by_role("link", name=named(rf"^\d+\. tuned-1:{CELL} "))
            expect(card).to_have_count(1, timeout=TIMEOUT_MS)
            expect(page.get_by_role("link", name=named(r"^\d+\. tuned-1:"))).to_have_count(2)
            page.screenshot(path=str(tmp_path / "studies.png"))
            card.click()
            page.get_by_role("link", name="Trials (List)", exact=True).click()
            count = page.get_by_text(f"{len(trials)} Trials", exact=True)
            expect(count).to_be_visible(timeout=TIMEOUT_MS)
            listed = page.get_by_role("button", name=named(r"^Trial \d+ "))
            expect(listed).to_have_count(len(trials))
            stopped = page.get_by_role("button", name=named(r"^Trial \d+ Pruned"))
            expect(stopped).to_have_count(pruned)
            page.screenshot(path=str(tmp_path / "trials.png"))
    finally:
        end_session(process.pid)
