"""The MLflow UI in a browser: what a user looks for after a sweep, checked against the REST API.

The smoke grid (mixup and cutmix x MCE and DM(CE), 2 epochs), submitted over HTTP to the sweep
service of the end-to-end stack (tests/integration/stack.py), is tracked by an MLflow server on
PostgreSQL with proxied artifacts, as in the compose deployment. Headless Chromium (Debian's,
driven by Playwright) then opens the UI: the sweep's experiment in the list, the sweep's parent
run with its trials nested under it, a trial's page (its cell tags, the per-epoch chart of
val_top1) and the report in the artifact viewer. What a page shows is compared with what
``MlflowClient`` reads, so a page showing the wrong run or stale values fails too.

The browser checks only read the four values ``tracked_sweep`` yields. Screenshots go to
each test's folder, and to ``$DMSWEEP_TEST_ARTIFACTS/mlflow-ui/`` when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

TIMEOUT_MS = 60_000  # a loaded 2-core machine renders the UI slowly
CELL_TAGS = ("dataset", "backbone", "method", "loss", "seed")
CELLS = "[role=columnheader], [role=cell], th, td"

expect.set_options(timeout=TIMEOUT_MS)


@dataclass(frozen=True)
class TrackedSweep:
    """A finished sweep in an MLflow server: all the browser checks know of it."""

    mlflow_url: str
    experiment: str
    sweep_id: str
    parent_run_id: str


@pytest.fixture(scope="module")
def tracked_sweep(served_smoke) -> TrackedSweep:
    """The smoke grid submitted to the service (MLflow server on PostgreSQL, Ray, the API)."""
    stack, view = served_smoke
    assert view["state"] == "succeeded", view
    parent_run_id = view["mlflow_run_url"].rsplit("/", 1)[1]
    return TrackedSweep(stack.mlflow.url, "smoke", view["id"], parent_run_id)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile (MLflow 3 opens such a profile in GenAI mode)."""
    require_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A tab; its last state is saved as a screenshot whatever the outcome."""
    tab = browser.new_page()
    yield tab
    screenshot(tab, tmp_path, f"{request.node.name}-end")
    tab.close()


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """``folder/<name>.png``, copied to ``$DMSWEEP_TEST_ARTIFACTS/mlflow-ui/`` when set."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    artifacts = os.environ.get("DMSWEEP_TEST_ARTIFACTS")
    if artifacts:
        target = Path(artifacts) / "mlflow-ui"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def model_training_mode(page: Page, base: str) -> None:
    """Switch the UI from its GenAI default to the "Model training" mode (kept by the profile)."""
    page.goto(f"{base}/#/experiments", wait_until="load")
    toggle = page.get_by_role("button", name="Model training", exact=True)
    toggle.click()


def children_of(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    """The parent's child runs, by name."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return sorted(runs, key=lambda run: run.info.run_name)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The pipe tables of a Markdown text: rows of cell texts, the separator rows left out."""
    tables: list[list[list[str]]] = []
    previous_was_row = False
    for line in text.splitlines():
        row = line.strip()
        if not row.startswith("|"):
            previous_was_row = False
            continue
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if not previous_was_row:
            tables.append([])
        previous_was_row = True
        if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
            tables[-1].append(cells)
    return tables


# --- the checks ----------------------------------------------------------------------------


def test_the_sweeps_experiment_is_listed(page: Page, tracked_sweep: TrackedSweep, tmp_path):
    client = MlflowClient(tracking_uri=tracked_sweep.mlflow_url)
    experiment = client.get_experiment_by_name(tracked_sweep.experiment)
    assert experiment is not None
    page.goto(f"{tracked_sweep.mlflow_url}/#/experiments", wait_until="load")
    link = page.get_by_role("link", name=tracked_sweep.experiment, exact=True)
    expect(link).to_be_visible()
    assert f"experiments/{experiment.experiment_id}" in link.get_attribute("href")
    screenshot(page, tmp_path, "experiments")


def test_the_parent_run_shows_its_trials_nested_under_it(
    page: Page, tracked_sweep: TrackedSweep, tmp_path
):
    base = tracked_sweep.mlflow_url
    client = MlflowClient(tracking_uri=base)
    parent = client.get_run(tracked_sweep.parent_run_id)
    experiment_id = parent.info.experiment_id
    children = children_of(client, experiment_id, parent.info.run_id)
    assert len(children) == 4  # the smoke grid: 2 methods x 2 losses, one seed

    model_training_mode(page, base)
    page.goto(f"{base}/#/experiments/{experiment_id}/runs", wait_until="load")
    parent_link = page.get_by_role("link", name=tracked_sweep.sweep_id, exact=True)
    expect(parent_link).to_be_visible()
    expect(page.get_by_text(f"{1 + len(children)} matching runs")).to_be_visible()
    # Collapsed, the trials are not rows of their own: they are nested in the parent's.
    for child in children:
        expect(page.get_by_role("link", name=child.info.run_name, exact=True)).to_have_count(0)
    screenshot(page, tmp_path, "runs-collapsed")

    parent_row = page.locator("[role=row]").filter(has=parent_link)
    parent_row.locator('[col-id="attributes.`Run Name`"] button').first.click()
    parent_index = int(parent_row.first.get_attribute("row-index"))
    child_indices = []
    for child in children:
        link = page.get_by_role("link", name=child.info.run_name, exact=True)
        expect(link).to_be_visible()
        assert child.info.run_id in link.get_attribute("href")
        row = page.locator("[role=row]").filter(has=link).first
        child_indices.append(int(row.get_attribute("row-index")))
    # The rows right under the parent's, and only them.
    assert sorted(child_indices) == list(range(parent_index + 1, parent_index + 1 + len(children)))
    screenshot(page, tmp_path, "runs-expanded")


def test_a_trial_run_shows_its_cell_tags_and_epoch_chart(
    page: Page, tracked_sweep: TrackedSweep, tmp_path
):
    base = tracked_sweep.mlflow_url
    client = MlflowClient(tracking_uri=base)
    experiment_id = client.get_run(tracked_sweep.parent_run_id).info.experiment_id
    run = children_of(client, experiment_id, tracked_sweep.parent_run_id)[0]
    run_id, tags = run.info.run_id, run.data.tags

    model_training_mode(page, base)
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}", wait_until="load")
    expect(page.get_by_role("heading", name=run.info.run_name, exact=True)).to_be_visible()
    # Each cell tag is shown as "key: value", with the value the API has.
    for key in CELL_TAGS:
        chip = page.locator("span").filter(has_text=re.compile(rf"^{key}: "))
        expect(chip).to_have_count(1)
        shown = chip.inner_text().split(": ", 1)[1].strip()
        assert shown == tags[key], (key, shown, tags[key])
    parent_link = page.get_by_role("link", name=tracked_sweep.sweep_id, exact=True)
    expect(parent_link).to_be_visible()
    assert tracked_sweep.parent_run_id in parent_link.get_attribute("href")
    screenshot(page, tmp_path, "trial-overview")

    page.get_by_role("tab", name="Model metrics").click()
    search = page.get_by_placeholder("Search metric charts")
    for key in run.data.metrics:  # a chart per metric (found by name: the page renders lazily)
        search.fill(key)
        expect(page.get_by_role("heading", name=key, exact=True)).to_be_visible()
    search.fill("val_top1")
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_role("heading", name="val_top1", exact=True)
    )
    expect(card).to_have_count(1)
    plot = card.locator(".js-plotly-plot")
    expect(plot.locator("path.point")).to_have_count(2)  # epochs 1 and 2
    # What the chart plots (the plotly figure's data) is the run's history, epoch by epoch.
    traces = plot.evaluate("plot => plot.data.map(t => [Array.from(t.x), Array.from(t.y)])")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_top1"))
    assert [step for step, _ in history] == [1, 2]
    assert traces
    for xs, ys in traces:
        assert sorted(zip(xs, ys, strict=True)) == history
    screenshot(page, tmp_path, "trial-val_top1")


def test_the_report_opens_in_the_artifact_viewer(page: Page, tracked_sweep: TrackedSweep, tmp_path):
    base = tracked_sweep.mlflow_url
    client = MlflowClient(tracking_uri=base)
    parent_id = tracked_sweep.parent_run_id
    experiment_id = client.get_run(parent_id).info.experiment_id
    files = {Path(a.path).name for a in client.list_artifacts(parent_id, "report")}
    assert {"report.md", "report.html", "results.parquet", "gains.png"} <= files
    markdown = Path(client.download_artifacts(parent_id, "report/report.md", str(tmp_path)))
    expected = markdown_tables(markdown.read_text())
    assert len(expected) == 2  # the results table and the DM - MCE gains

    model_training_mode(page, base)
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{parent_id}/artifacts", wait_until="load")
    page.get_by_text("report", exact=True).click()
    for name in files:
        expect(page.get_by_text(name, exact=True)).to_be_visible()
    page.get_by_text("report.md", exact=True).click()
    expect(page.get_by_text("report/report.md", exact=True)).to_be_visible()
    tables = page.get_by_role("table")  # the viewer renders the Markdown's tables
    expect(tables).to_have_count(len(expected))
    shown = [
        [
            [cell.inner_text().strip() for cell in row.locator(CELLS).all()]
            for row in table.get_by_role("row").all()
        ]
        for table in tables.all()
    ]
    assert shown == expected
    screenshot(page, tmp_path, "report-md")

    # The table's cells are the trials' final top-1 (runs of 10 epochs or fewer; one seed: n=1).
    header, *rows = shown[0]
    for child in children_of(client, experiment_id, parent_id):
        tags = child.data.tags
        row = next(r for r in rows if r[0] == tags["method"])
        column = header.index(f"{tags['dataset']} / {tags['backbone']} / {tags['loss']}")
        value, count = re.fullmatch(r"(\S+) \(n=(\d+)\)", row[column]).groups()
        assert count == "1"
        assert float(value) == pytest.approx(child.data.metrics["val_top1"], abs=0.006)
