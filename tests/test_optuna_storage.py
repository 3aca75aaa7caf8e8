"""Where a tuning sweep's Optuna studies go (service/sweep/searcher.py, ``StudyStorage``).

A cluster keeps them in its PostgreSQL, named by ``DMSWEEP_OPTUNA_STORAGE`` (or the file
``DMSWEEP_OPTUNA_STORAGE_FILE`` names) in the sweep driver's environment; a local run keeps
them in ``optuna.db`` of the sweep's folder. The database's password must reach no file of the
sweep's folder (Tune pickles the searcher there), and a spec may not carry credentials.

A real PostgreSQL (tests/integration/services.py) holds the studies; one tiny sweep runs on a
Ray started in this process.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from service.results.folder import SweepFolder
from service.spec.path_policy import path_problems
from service.spec.reading import spec_from_dict
from service.spec.search import redact_url
from service.sweep.engine import SpecError, preflight, run_sweep, study_storage
from service.sweep.searcher import (
    STORAGE_FILE_VAR,
    STORAGE_VAR,
    CellStudies,
    OptunaStorageError,
    StudyPlan,
    StudyStorage,
    open_storage,
    url_from_env,
)
from tests.integration.services import Postgres, postgres_server
from tests.integration.sweep_helpers import tiny_spec

CELL = "synthetic/smallnet/mixup/dm_ce"
ETAS = [0.1, 1.0]
GRID_SEARCH = {"parameters": {"eta": ETAS}, "sampler": "grid"}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL with a database (and a role with a password) per test that needs one."""
    folder = tmp_path_factory.mktemp("postgres")
    with postgres_server(folder, databases=("searcher", "clash", "race", "sweep")) as server:
        yield server


def psycopg_url(postgres: Postgres, database: str) -> str:
    """The database's URL with psycopg 3, the driver dmsweep installs."""
    url = make_url(postgres.url(database)).set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def password(url: str) -> str:
    secret = make_url(url).password
    assert secret and len(str(secret)) >= 16  # long enough not to turn up by chance
    return str(secret)


def plan(name: str, epochs: int = 1) -> StudyPlan:
    return StudyPlan(
        name=name,
        cell="cell",
        seed=0,
        space={"eta": ETAS},
        budget=len(ETAS),
        epochs=epochs,
        sampler_seed=0,
    )


def studies(name: str, storage: StudyStorage, owner: str | None = None) -> CellStudies:
    return CellStudies(
        [plan(name)], storage_url=storage, sampler="grid", metric="acc", mode="max", owner=owner
    )


def files_holding(folder: Path, secret: str) -> list[Path]:
    """Every file under ``folder`` whose bytes contain ``secret``."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file() and secret.encode() in path.read_bytes()
    ]


# --- the variables -----------------------------------------------------------------------------


def test_the_url_comes_from_the_variable_else_from_the_file_it_names(tmp_path):
    variable = "postgresql+psycopg://optuna:from-variable@db:5432/optuna"
    in_file = "postgresql+psycopg://optuna:from-file@db:5432/optuna"
    secret = tmp_path / "optuna-url"
    secret.write_text(in_file + "\n")
    assert url_from_env({}) is None
    assert url_from_env({STORAGE_FILE_VAR: str(secret)}) == in_file
    both = {STORAGE_VAR: variable, STORAGE_FILE_VAR: str(secret)}
    assert url_from_env(both) == variable  # as the service's *_FILE tokens
    # What is kept of it (pickled with the searcher) has no password.
    kept = StudyStorage.from_env({STORAGE_VAR: variable})
    assert kept == StudyStorage(shown="postgresql+psycopg://optuna:***@db:5432/optuna", url=None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({STORAGE_VAR: "hunter2-not-a-url"}, "DMSWEEP_OPTUNA_STORAGE is not a database URL"),
        (
            {STORAGE_VAR: "postgresql+psycopg2://u:hunter2@db/optuna"},
            "names the driver 'postgresql+psycopg2' (dmsweep installs psycopg 3 only: write "
            "postgresql+psycopg://); allowed: postgresql+psycopg, sqlite",
        ),
        ({STORAGE_VAR: "postgresql://u:hunter2@db/optuna"}, "names the driver 'postgresql' ("),
        ({STORAGE_VAR: "mysql://u:hunter2@db/optuna"}, "names the driver 'mysql'"),
        ({STORAGE_VAR: "sqlite://"}, "in-memory SQLite; give a file"),
        ({STORAGE_FILE_VAR: "/no/such/file"}, "=/no/such/file: No such file or directory"),
    ],
)
def test_an_unusable_storage_is_refused_naming_the_variable(env, expected):
    with pytest.raises(OptunaStorageError) as refused:
        url_from_env(env)
    assert expected in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_an_empty_url_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(OptunaStorageError, match=f"{STORAGE_FILE_VAR}={empty}: the file is empty"):
        url_from_env({STORAGE_FILE_VAR: str(empty)})


def test_a_sweep_with_an_unusable_variable_is_refused_before_anything_is_created(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(STORAGE_VAR, "postgresql+psycopg2://u:hunter2@db/optuna")
    spec = spec_from_dict(tiny_spec("refused", search=GRID_SEARCH))
    with pytest.raises(SpecError, match="DMSWEEP_OPTUNA_STORAGE names the driver"):
        preflight(spec)  # refused before it connects to Ray or makes a folder


# --- the spec's search.storage ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://optuna:hunter2@db:5432/optuna",
        # a password holding "/" (base64) and "@"
        "postgresql+psycopg://optuna:hunter2/ab+c@d==@db:5432/optuna",
        "not a url://optuna:hunter2/x@db",
    ],
)
def test_a_spec_with_database_credentials_is_refused_pointing_to_the_variable(url):
    search = {**GRID_SEARCH, "storage": url}
    with pytest.raises(ValueError) as refused:
        spec_from_dict(tiny_spec("creds", search=search))
    message = str(refused.value)
    assert message.startswith("search.storage: ")
    assert "a spec may name only a SQLite file here, sqlite:///PATH" in message
    assert "set DMSWEEP_OPTUNA_STORAGE (or DMSWEEP_OPTUNA_STORAGE_FILE)" in message
    assert "hunter2" not in message


def test_a_spec_may_name_a_sqlite_file_locally_and_the_service_refuses_it(tmp_path):
    search = {**GRID_SEARCH, "storage": f"sqlite:///{tmp_path / 'mine.db'}"}
    spec = spec_from_dict(tiny_spec("sqlite", search=search))
    folder = SweepFolder(tmp_path / "sqlite-1")
    env = {STORAGE_VAR: "postgresql+psycopg://u:p@db/optuna"}
    assert study_storage(spec, folder, env).url == f"sqlite:///{tmp_path / 'mine.db'}"
    [problem] = path_problems(spec, data_roots=[], storage_root=tmp_path, tracking_uri=None)
    assert problem.location == ("search", "storage")
    assert "DMSWEEP_OPTUNA_STORAGE on the Ray head" in problem.message


# --- the searcher on PostgreSQL and SQLite ----------------------------------------------------


def test_studies_go_to_the_sweep_folder_without_the_variable(tmp_path):
    spec = spec_from_dict(tiny_spec("local", search=GRID_SEARCH))
    folder = SweepFolder(tmp_path / "local-1")
    folder.path.mkdir()
    storage = study_storage(spec, folder, env={})
    assert storage.url == f"sqlite:///{folder.path / 'optuna.db'}"
    searcher = studies("local-1:cell", storage)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"acc": 0.5, "epoch": 1})
    study = optuna.load_study(study_name="local-1:cell", storage=folder.optuna_url)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.5)]


def test_studies_go_to_postgresql_and_its_password_is_never_pickled(
    postgres, tmp_path, monkeypatch
):
    url = psycopg_url(postgres, "searcher")
    monkeypatch.setenv(STORAGE_VAR, url)
    folder = SweepFolder(tmp_path / "pg-1")
    spec = spec_from_dict(tiny_spec("pg", search=GRID_SEARCH))
    storage = study_storage(spec, folder)
    assert storage.url is None  # read from the environment at every open
    searcher = studies("pg-1:cell", storage, owner=str(folder.path))
    first = searcher.suggest("t1")
    searcher.on_trial_result("t1", {"acc": 0.25, "epoch": 1})
    searcher.on_trial_complete("t1", {"acc": 0.25, "epoch": 1})
    assert "pg-1:cell" in optuna.get_all_study_names(storage=url)
    # What Tune keeps of the searcher in the sweep folder: its saved state and itself pickled.
    state = tmp_path / "searcher-state.pkl"
    searcher.save(str(state))
    assert password(url).encode() not in state.read_bytes()
    assert password(url).encode() not in pickle.dumps(searcher)

    # Resumed where the variable is gone: said, naming it, without the password.
    with monkeypatch.context() as unset:
        unset.delenv(STORAGE_VAR)
        lost = studies("pg-1:cell", StudyStorage(shown="?"), owner=str(folder.path))
        lost.restore(str(state))
        with pytest.raises(OptunaStorageError) as refused:
            lost.suggest("t2")
    message = str(refused.value)
    assert "keeps its Optuna studies in postgresql+psycopg://searcher:***@127.0.0.1:" in message
    assert "set it again in the environment of the sweep's driver" in message
    assert password(url) not in message

    # Resumed with it: the URL is read from the environment again, the study goes on.
    resumed = studies("pg-1:cell", StudyStorage(shown="?"), owner=str(folder.path))
    resumed.restore(str(state))
    second = resumed.suggest("t2")
    resumed.on_trial_complete("t2", {"acc": 0.75, "epoch": 1})
    assert isinstance(first, dict) and isinstance(second, dict)
    assert {first["params"]["eta"], second["params"]["eta"]} == set(ETAS)  # the grid, once
    study = optuna.load_study(study_name="pg-1:cell", storage=url)
    assert sorted(t.value or 0.0 for t in study.trials) == [0.25, 0.75]
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert study.user_attrs["dmsweep.sweep_folder"] == str(folder.path)
    assert not (folder.path / "optuna.db").exists()


def test_a_study_of_the_same_name_held_by_another_sweep_is_refused(postgres, monkeypatch):
    monkeypatch.setenv(STORAGE_VAR, psycopg_url(postgres, "clash"))
    storage = StudyStorage.from_env()
    assert storage is not None
    mine = studies("same-id:cell", storage, owner="/a/same-id")
    mine.suggest("t1")
    other = studies("same-id:cell", storage, owner="/b/same-id")
    with pytest.raises(OptunaStorageError, match="belongs to the sweep in /a/same-id"):
        other.suggest("t1")


def test_drivers_opening_a_new_database_at_once_all_get_it(postgres):
    url = psycopg_url(postgres, "race")
    # Without the lock, five of six threads failed with "duplicate key value violates unique
    # constraint" while Optuna made its tables (four tries in four).
    start = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            open_storage(url)
        except Exception as error:  # recorded for the assertion below
            failures.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert optuna.get_all_study_names(storage=url) == []


# --- one tiny sweep -------------------------------------------------------------------------


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A Ray in this process for the sweep (two 1-CPU trials at once), shut down after it."""
    import ray

    from service.sweep.ray_setup import ray_init_options

    if ray.is_initialized():  # another module's: used as it is
        yield
        return
    ray.init(**ray_init_options("local", slots=2, num_cpus=2))
    try:
        yield
    finally:
        ray.shutdown()


def test_a_sweeps_studies_land_in_postgresql_and_its_password_in_no_file(
    postgres, tmp_path, monkeypatch, local_ray
):
    url = psycopg_url(postgres, "sweep")
    monkeypatch.setenv(STORAGE_VAR, url)
    spec = tiny_spec(
        "pg-sweep",
        grid={"method": ["mixup"], "loss": ["dm_ce"]},
        epochs=1,
        search=GRID_SEARCH,
    )
    outcome = run_sweep(
        spec_from_dict(spec), yaml.safe_dump(spec), storage_path=tmp_path / "storage"
    )
    assert outcome.exit_code == 0
    name = f"{outcome.folder.sweep_id}:{CELL}"
    assert name in optuna.get_all_study_names(storage=url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert sorted(t.params["eta"] for t in trials) == ETAS
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    folder = outcome.folder.path
    assert not (folder / "optuna.db").exists()
    # Tune pickled the searcher into the folder (with the URL's redacted form)...
    pickled = {p.name for p in files_holding(folder, redact_url(url))}
    assert "tuner.pkl" in pickled and any(n.startswith("searcher-state") for n in pickled)
    # ...and neither that nor the records, logs, MLflow's store or the report has the password.
    assert files_holding(tmp_path, password(url)) == []
