"""The sweep service's limits and its dealings with Ray, over real HTTP (issue 12, items 5, 6,
11-14 and 16).

The server is the real app on uvicorn in a thread with a SQLite store and a fast poller. Its Ray
is ``tests.support.fake_ray``: a job server that runs nothing, so a test can have it do what a
real cluster does only by chance (lose a submit's answer, refuse a job, report a job failed).
The tests run in this file's order: they share the server and its count of active sweeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml

from service.results.folder import SweepFolder
from service.results.records import SweepInfo, SweepStatus, TrialRecord
from service.server.ray_jobs import DRIVER_MEMORY_BYTES
from service.spec.capacity import HEAD_RESOURCE, NodeShape, live_nodes, resource_problems
from service.spec.model import Resources
from tests.support.api_server import AUTH, YAML, Served
from tests.support.fake_ray import FakeJobServer, fake_job_server
from tests.support.specs import tiny_spec_yaml

MAX_ACTIVE = 4
POLL_S = 0.3


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeJobServer]:
    with fake_job_server() as fake:
        yield fake


@pytest.fixture(scope="module")
def served(fake: FakeJobServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(
        tmp_path_factory.mktemp("api-limits"),
        ray_address=fake.url,
        poll_s=POLL_S,
        max_active_sweeps=MAX_ACTIVE,
    )
    served.start()
    yield served
    served.stop()


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=AUTH, timeout=60) as client:
        yield client


def submit(client: httpx.Client, name: str) -> httpx.Response:
    return client.post("/sweeps", content=tiny_spec_yaml(name=name), headers=YAML)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def states(client: httpx.Client) -> dict[str, str]:
    """Each sweep's state as stored (the list reads no job from Ray)."""
    return {s["id"]: s["state"] for s in client.get("/sweeps", params={"limit": 500}).json()}


RECORD = {
    "cell": "synthetic/smallnet/mixup/mce",
    "dataset": "synthetic",
    "backbone": "smallnet",
    "method": "mixup",
    "loss": "mce",
    "seed": 0,
    "status": "succeeded",
    "recipe": "smoke",
    "epochs": 1,
    "comparable": False,
    "epoch": 1,
    "val_top1": 40.0,
    "top1_final": 40.0,
}
TRIALS = {"x_00001": "c/seed1", "x_00010": "c/seed10", "y_00003": "d/seed0"}


def finished_sweep(served: Served, sweep_id: str) -> SweepFolder:
    """Give sweep ``sweep_id`` a folder as its driver leaves it: spec, state, records, logs."""
    folder = SweepFolder(served.storage / sweep_id)
    folder.path.mkdir(parents=True)
    folder.spec_file.write_text(tiny_spec_yaml(name="finished"))
    folder.write_state(SweepInfo(sweep_id, "finished", SweepStatus.SUCCEEDED))
    folder.logs_dir.mkdir()
    for trial_id, name in TRIALS.items():
        folder.write_record(TrialRecord.from_row({**RECORD, "trial_id": trial_id, "name": name}))
        folder.log_file(trial_id).write_text(f"log of {name}\n")
    return folder


# --- item 5: active sweeps, driver resources -------------------------------------------------


def test_active_sweeps_are_limited_and_drivers_declare_their_memory(served, fake, client):
    taken = []
    for number in range(MAX_ACTIVE):
        response = submit(client, f"limit-{number}")
        assert response.status_code == 201, response.text
        taken.append(response.json()["id"])
    refused = submit(client, "limit-over")
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "60"
    detail = refused.json()["detail"]
    assert f"{MAX_ACTIVE} active sweeps" in detail and "DMSWEEP_MAX_ACTIVE_SWEEPS" in detail
    assert not any(s.startswith("limit-over") for s in states(client))
    assert not list((served.storage / ".specs").glob("limit-over*"))

    # Each driver declares its memory to Ray, and no CPU: many sweeps cannot overcommit a node,
    # and drivers never hold the CPUs their trials need.
    bodies = fake.submitted("limit-")
    assert len({b["submission_id"] for b in bodies}) == MAX_ACTIVE
    assert all(b["entrypoint_memory"] == DRIVER_MEMORY_BYTES for b in bodies)
    # ... on the head: a sliver of the resource only the head has
    assert all(b["entrypoint_resources"] == {HEAD_RESOURCE: 0.001} for b in bodies)
    assert not any(b.get("entrypoint_num_cpus") for b in bodies)

    # A finished (here: cancelled) sweep gives its place back.
    assert client.post(f"/sweeps/{taken[0]}/cancel").json()["state"] == "cancelled"
    again = submit(client, "limit-again")
    assert again.status_code == 201, again.text
    for sweep_id in [*taken[1:], again.json()["id"]]:
        assert client.post(f"/sweeps/{sweep_id}/cancel").json()["state"] == "cancelled"


def test_the_capacity_check_counts_the_drivers_memory_on_the_head():
    gib = 2**30
    head = {HEAD_RESOURCE: 1.0, "CPU": 0.0}
    small = live_nodes([{"CPU": 8.0, "memory": 4.0 * gib}, {**head, "memory": 1.2 * gib}])
    large = live_nodes([{**head, "memory": 2.0 * gib}, {"CPU": 1.0, "memory": 0.5 * gib}])
    assert resource_problems(Resources(), small) == []  # dmsweep run: the driver is local
    # A worker with room does not help: the driver runs on the head.
    (problem,) = resource_problems(Resources(), small, driver_memory=DRIVER_MEMORY_BYTES)
    assert "declares 1.5 GiB" in problem.message and "the head has 1.2 GiB" in problem.message
    assert resource_problems(Resources(), large, driver_memory=DRIVER_MEMORY_BYTES) == []
    # A shape that does not say its memory is taken to have enough.
    declared = [NodeShape("worker group cpu", {"CPU": 8.0}, count=2)]
    assert resource_problems(Resources(), declared, driver_memory=DRIVER_MEMORY_BYTES) == []


# --- item 6: pages and log tails -------------------------------------------------------------


def test_the_list_comes_in_pages_with_a_cursor(client):
    everything = [s["id"] for s in client.get("/sweeps", params={"limit": 500}).json()]
    assert len(everything) >= 5
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = client.get("/sweeps", params=params)
        assert page.status_code == 200, page.text
        assert len(page.json()) <= 2
        seen += [s["id"] for s in page.json()]
        if "X-Next-Cursor" not in page.headers:
            break
        assert page.headers["Link"].endswith('rel="next"')
        params = {"limit": 2, "cursor": page.headers["X-Next-Cursor"]}
    assert seen == everything  # newest first, none twice, none left out
    for limit in (0, 501):
        too = client.get("/sweeps", params={"limit": limit})
        assert too.status_code == 422, too.text
    unknown = client.get("/sweeps", params={"cursor": "nope"})
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]
    document = client.get("/openapi.json").json()["paths"]["/sweeps"]["get"]
    assert {p["name"] for p in document["parameters"]} == {"limit", "cursor"}
    assert "X-Next-Cursor" in document["responses"]["200"]["headers"]


def test_logs_are_a_bounded_tail_with_a_way_to_ask_for_more(served, fake, client):
    sweep_id = submit(client, "big-logs").json()["id"]
    folder = finished_sweep(served, sweep_id)
    big = b"".join(b"line %07d\n" % i for i in range(300_000))  # 3.6 MB
    folder.log_file("y_00003").write_bytes(big)
    path = f"/sweeps/{sweep_id}/logs"

    tail = client.get(path, params={"trial": "y_00003"})
    assert tail.status_code == 200, tail.text
    assert tail.content == big[-(1 << 20) :]
    assert int(tail.headers["X-Log-Size"]) == len(big)
    assert int(tail.headers["X-Log-Offset"]) == len(big) - (1 << 20)
    head = client.get(path, params={"trial": "y_00003", "offset": 0, "max_bytes": 20})
    assert head.content == big[:20] and head.headers["X-Log-Offset"] == "0"
    too_much = client.get(path, params={"trial": "y_00003", "max_bytes": 1 << 30})
    assert too_much.status_code == 422, too_much.text

    job_id = client.get(f"/sweeps/{sweep_id}").json()["ray_job_id"]
    with fake.lock:
        fake.logs[job_id] = big.decode()
    job_tail = client.get(path, params={"max_bytes": 1000})
    assert job_tail.content == big[-1000:]
    assert int(job_tail.headers["X-Log-Size"]) == len(big)
    assert client.post(f"/sweeps/{sweep_id}/cancel").status_code == 200


# --- item 16: one trial lookup -----------------------------------------------------------------


def test_a_trial_is_found_by_a_unique_prefix_and_an_ambiguous_one_is_refused(served, client):
    sweep_id = submit(client, "lookup").json()["id"]
    finished_sweep(served, sweep_id)
    cancelled = client.post(f"/sweeps/{sweep_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    path = f"/sweeps/{sweep_id}/logs"

    assert client.get(path, params={"trial": "d/"}).text == "log of d/seed0\n"  # a prefix
    assert client.get(path, params={"trial": "c/seed1"}).text == "log of c/seed1\n"  # whole
    assert client.get(path, params={"trial": "x_0001"}).text == "log of c/seed10\n"  # an id's
    ambiguous = client.get(path, params={"trial": "c/seed"})
    assert ambiguous.status_code == 404
    detail = ambiguous.json()["detail"]
    assert "matches x_00001, x_00010" in detail and "a prefix of exactly one" in detail
    none = client.get(path, params={"trial": "nope"})
    assert none.status_code == 404 and "matches none" in none.json()["detail"]


# --- item 12: the report is rendered in memory -------------------------------------------------


def test_the_report_writes_nothing_into_the_sweep_folder(served, client):
    sweep_id = submit(client, "report").json()["id"]
    folder = finished_sweep(served, sweep_id)
    assert client.post(f"/sweeps/{sweep_id}/cancel").status_code == 200
    before = sorted(p.relative_to(folder.path) for p in folder.path.rglob("*"))

    report = client.get(f"/sweeps/{sweep_id}/report")
    assert report.status_code == 200, report.text
    assert report.headers["content-type"].startswith("text/markdown")
    assert "mixup" in report.text and "40.00" in report.text
    assert sorted(p.relative_to(folder.path) for p in folder.path.rglob("*")) == before


# --- item 11: the spec is on disk before the row -----------------------------------------------


def test_no_sweep_is_stored_when_its_spec_cannot_be_written(served, client):
    specs = served.storage / ".specs"
    aside = served.storage / ".specs-aside"
    before = set(states(client))
    specs.rename(aside)
    specs.write_text("not a folder")  # the spec cannot be written there
    try:
        response = submit(client, "no-spec")
    finally:
        specs.unlink()
        aside.rename(specs)
    assert response.status_code == 500, response.text
    assert "could not write the sweep's spec" in response.json()["detail"]
    assert "nothing was created" in response.json()["detail"]
    assert set(states(client)) == before

    # A sweep that is stored has its whole spec, and no draft is left behind.
    stored = submit(client, "with-spec").json()["id"]
    assert yaml.safe_load((specs / f"{stored}.yaml").read_text())["name"] == "with-spec"
    assert not list(specs.glob(".draft-*"))
    assert client.post(f"/sweeps/{stored}/cancel").status_code == 200


# --- item 14: the poller per sweep; permanent refusals -----------------------------------------


def test_a_job_ray_refuses_fails_the_sweep_with_its_reason(fake, client):
    with fake.lock:
        fake.refuse["ray-refuses"] = "entrypoint_num_cpus: not a valid resource request"
    response = submit(client, "ray-refuses")
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["state"] == "failed"
    assert "refused the job: 400 entrypoint_num_cpus: not a valid" in sweep["message"]
    # The poller may have tried the new sweep at the same moment as the submit itself (on a
    # loaded machine its try may land a little later); once it failed, several passes of the
    # poller ask Ray no more.
    tries = len(fake.submitted("ray-refuses"))
    deadline = time.monotonic() + 30
    while True:
        time.sleep(2 * POLL_S)
        now = len(fake.submitted("ray-refuses"))
        settled, tries = now == tries, now
        if settled or time.monotonic() > deadline:
            break
    assert tries <= 2
    time.sleep(5 * POLL_S)
    assert len(fake.submitted("ray-refuses")) == tries
    assert client.get(f"/sweeps/{sweep['id']}").json()["state"] == "failed"


def test_one_sweep_that_cannot_be_read_does_not_stop_the_pollers_pass(served, fake, client):
    good = submit(client, "good-row").json()
    bad = submit(client, "bad-row").json()  # newer: the pass meets it first
    assert good["state"] == bad["state"] == "submitted"
    # The bad sweep's job failed and its folder's sweep.json is damaged.
    bad_state = SweepFolder(served.storage / bad["id"]).state_file
    bad_state.parent.mkdir(parents=True)
    bad_state.write_text("{}")
    fake.set_status(bad["ray_job_id"], "FAILED")
    fake.set_status(good["ray_job_id"], "SUCCEEDED")
    wait_for("the poller reads the good sweep", lambda: states(client)[good["id"]] == "succeeded")
    assert states(client)[bad["id"]] == "submitted"  # tried again each pass

    bad_state.write_text(json.dumps({"sweep_id": bad["id"], "name": "bad-row", "status": "failed"}))
    wait_for("the poller reads the repaired sweep", lambda: states(client)[bad["id"]] == "failed")


# --- item 13: a cancelled queued sweep's job is stopped ----------------------------------------


def test_cancelling_a_queued_sweep_stops_the_job_that_reached_ray(fake, client):
    with fake.lock:
        fake.lose_answer_once.add("lost-answer")
    response = submit(client, "lost-answer")
    assert response.status_code == 201, response.text
    sweep = response.json()
    # The service never heard back (the poller may have found the job on Ray meanwhile) ...
    assert sweep["state"] in ("queued", "submitted")
    job_id = f"dmsweep-{sweep['id']}-1"
    assert fake.status(job_id) == "RUNNING"  # ... but the job reached Ray

    cancelled = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    # Ray is skipped for a few seconds after the lost answer: the poller stops the job then,
    # and a resume meanwhile waits for that, never running a second driver beside it.
    resumed = client.post(f"/sweeps/{sweep['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    second = f"dmsweep-{sweep['id']}-2"
    wait_for(f"{second} is submitted", lambda: fake.status(second) == "RUNNING")
    assert fake.status(job_id) == "STOPPED"
    with fake.lock:
        events = [e for e in fake.events if sweep["id"] in e[1]]
    assert events.index(("stop", job_id)) < events.index(("submit", second)), events
    wait_for(
        "the resumed sweep runs its new job",
        lambda: client.get(f"/sweeps/{sweep['id']}").json()["ray_job_id"] == second,
    )
    assert client.post(f"/sweeps/{sweep['id']}/cancel").json()["state"] == "cancelled"
