"""The README's "The service on one machine, without Docker", run as it is written there.

The section's first two code blocks are run by bash, line for line, with only what keeps this
test apart from anything else on the machine: free ports for Ray and the service, Ray's temp
folder and a temporary HOME (so Ray's token goes to ``<tmp>/home/.ray/auth_token``, never to the
machine's ``~/.ray``), a working folder whose ``.venv`` is this checkout's and whose
``search_spaces/smoke.yaml`` is the smoke grid trimmed (its two Mixup cells, tiny images, one
epoch: one round of trials on the 2-CPU head). Nothing sets
``RAY_AUTH_MODE``: ``ray start --head`` turns Ray's token auth on because the recipe made a
token, and ``dmsweep serve`` must find that token by itself (a service that did not left every
sweep queued with "Missing authentication token").

The shell also holds ``DMSWEEP_OPTUNA_STORAGE`` with a password, as an operator's would who
keeps Optuna studies in PostgreSQL: it must reach neither the sweep's Ray job (entrypoint,
runtime env) nor any file of the storage root (the smoke grid tunes nothing, so no study opens).

The third block (``kill %1``, ``ray stop``) is not run: ``ray stop`` ends every Ray of the
machine. The test ends the session its bash started instead (the service, and Ray's processes,
which leave their process group but keep the session) and checks that no process it started
is left: none in that session, none with its temporary HOME or folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from services import short_temp_dir, wait_until
from sweep_helpers import tiny_spec

from tests.support import REPO
from tests.support.ports import free_port
from tests.support.processes import kill_session, session_processes

SECTION = "### The service on one machine, without Docker"
TIMEOUT_S = 240  # the whole test took 80-100 s on 2 cores busy with other tests
FINAL = ("succeeded", "failed", "cancelled")


def recipe_blocks() -> list[list[str]]:
    """The code blocks (4-space indented) of the README's section, each as its lines."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n#", start)
    blocks: list[list[str]] = []
    previous_indented = False
    for line in text[start:end].splitlines():
        indented = line.startswith("    ")
        if indented:
            if not previous_indented:
                blocks.append([])
            blocks[-1].append(line[4:])
        previous_indented = indented or (previous_indented and not line.strip())
    return blocks


def isolated(line: str, ports: dict[str, int], ray_temp: Path) -> str:
    """``line`` with this test's ports and Ray temp folder in place of the defaults."""
    line = line.replace("127.0.0.1:8000", f"127.0.0.1:{ports['api']}")
    if "ray start --head" in line:
        flags = [
            f"--port {ports['gcs']}",
            f"--dashboard-port {ports['dashboard']}",
            f"--dashboard-agent-listen-port {ports['agent']}",
            f"--ray-client-server-port {ports['client']}",
            f"--temp-dir {ray_temp}",
            "--disable-usage-stats",
        ]
        line = line.replace("ray start --head", "ray start --head " + " ".join(flags))
    if "dmsweep serve" in line:
        line = line.replace("dmsweep serve", f"dmsweep serve --port {ports['api']}")
    return line


def trimmed_smoke() -> str:
    """search_spaces/smoke.yaml trimmed: the tiny images of the integration tests, one epoch."""
    spec = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    tiny = tiny_spec("smoke")
    # The Mixup cells only: one round of trials on a 2-CPU head.
    spec["grid"]["method"] = ["mixup"]
    spec.update(epochs=1, data=tiny["data"], eval=tiny["eval"])
    return yaml.safe_dump(spec, sort_keys=False)


def processes_with(marker: str) -> list[str]:
    """Live processes whose command line or environment names ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if marker.encode() in seen:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


def bash(lines: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """``lines`` as one bash script (stopping at the first failure) in a session of its own."""
    # -x with the time: the log says which command took how long.
    script = "PS4='+ $(date +%T) '\nset -ex\n" + "\n".join(lines) + "\n"
    with log.open("ab") as out:
        return subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def http_get(url: str, token: str | None) -> tuple[int, str]:
    """GET ``url`` with a bearer token (none: without); the status and the body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def status_of(sweep_id: str, lines: list[str], env: dict[str, str], cwd: Path) -> str:
    """The sweep's state in the table the README's ``dmsweep status`` prints."""
    status = subprocess.run(
        ["bash", "-c", "\n".join(lines)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    row = next(line for line in status.stdout.splitlines() if sweep_id in line)
    return row.split("│")[2].strip()


def test_the_readme_recipe_runs_the_smoke_grid_and_leaves_nothing_behind():
    start_block, use_block, stop_block = recipe_blocks()[:3]
    # The commands the README gives, which the substitutions below must find.
    assert ".venv/bin/ray start --head --resources '{\"trial_slot\": 4}'" in start_block
    assert any(line.startswith(".venv/bin/dmsweep serve ") for line in start_block)
    assert any("dmsweep submit search_spaces/smoke.yaml" in line for line in use_block)
    assert any("ray stop" in line for line in stop_block)
    assert not any("RAY_AUTH_MODE" in line for line in start_block + use_block)

    base = short_temp_dir("one-")  # short: Ray's socket paths live under it
    home, work, ray_temp = base / "home", base / "work", base / "ray"
    for folder in (home, work / "search_spaces", ray_temp):
        folder.mkdir(parents=True)
    (work / ".venv").symlink_to(REPO / ".venv")
    (work / "search_spaces" / "smoke.yaml").write_text(trimmed_smoke())
    ports = {name: free_port() for name in ("gcs", "dashboard", "agent", "client", "api")}
    optuna_password = secrets.token_hex(16)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_", "DMSWEEP_", "PYTHON"))
    }
    env |= {
        "HOME": str(home),
        "COLUMNS": "250",  # one line per sweep in `dmsweep status`
        "DMSWEEP_RAY_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}",
        "DMSWEEP_OPTUNA_STORAGE": (
            f"postgresql+psycopg://optuna:{optuna_password}@127.0.0.1:{free_port()}/optuna"
        ),
    }
    exports = [isolated(line, ports, ray_temp) for line in start_block if line.startswith("export")]
    status_line = next(line for line in use_block if "dmsweep status" in line)
    log = base / "recipe.log"
    began = time.monotonic()
    shell = bash(
        [isolated(line, ports, ray_temp) for line in start_block + use_block], env, work, log
    )
    try:
        try:
            assert shell.wait(timeout=150) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            pytest.fail(f"the recipe did not get through in 150 s:\n{log.read_text()[-4000:]}")
        found = re.search(r"^(smoke-\S+): (queued|submitted|running)", log.read_text(), re.M)
        assert found, log.read_text()
        sweep_id = found[1]

        # Ray's auth is on (with the token the recipe made), and the service gets through it.
        dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        assert http_get(f"{dashboard}/api/version", None)[0] == 401
        ray_token = (home / ".ray" / "auth_token").read_text().strip()
        # Waited for over HTTP (each `dmsweep status` starts a Python that imports torch);
        # then the README's `dmsweep status` must show the end.
        api = f"http://127.0.0.1:{ports['api']}"
        api_token = (home / ".dmsweep-token").read_text().strip()

        def ended() -> dict | None:
            view = json.loads(http_get(f"{api}/sweeps/{sweep_id}", api_token)[1])
            if "401" in (view.get("message") or ""):  # the service lacks Ray's token
                pytest.fail(f"the service was refused by Ray: {view}")
            return view if view["state"] in FINAL else None

        try:
            view = wait_until(ended, f"sweep {sweep_id} to end", TIMEOUT_S - 30, interval_s=1)
        except TimeoutError as error:
            view = json.loads(http_get(f"{api}/sweeps/{sweep_id}", api_token)[1])
            pytest.fail(f"{error}: {view}")
        assert view["state"] == "succeeded", view
        status = [*exports, isolated(status_line, ports, ray_temp)]
        assert status_of(sweep_id, status, env, work) == "succeeded"

        # The shell's Optuna URL reached neither the job nor a file of the storage root.
        answer, job = http_get(f"{dashboard}/api/jobs/dmsweep-{sweep_id}-1", ray_token)
        assert answer == 200, job
        info = json.loads(job)
        assert info["status"] == "SUCCEEDED" and "service.cli run" in info["entrypoint"]
        for shown_by_ray in (info["entrypoint"], json.dumps(info.get("runtime_env"))):
            assert optuna_password not in shown_by_ray
        runs = work / "runs"
        assert (runs / sweep_id / "results.parquet").is_file()
        secret = optuna_password.encode()
        assert [p for p in runs.rglob("*") if p.is_file() and secret in p.read_bytes()] == []
    finally:
        # What `kill %1` and `ray stop` would end: the service and this Ray, by their session.
        # SIGTERM first, as they do; Ray's GCS server (and one helper) outlived it by 25 s and
        # more, so after 2 s the rest is killed, as `ray stop` does after its grace period.
        for pid in session_processes(shell.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        kill_session(shell.pid, wait_s=5, grace_s=2)
        left = session_processes(shell.pid), processes_with(str(base))
        shutil.rmtree(base, ignore_errors=True)
    assert left == ([], [])
    assert time.monotonic() - began < TIMEOUT_S


# --- where the service finds Ray's token (service/server/settings.py) -------------------------


def ray_token_of(env: dict[str, str]) -> str | None:
    from service.server.settings import ServiceSettings

    return ServiceSettings.from_env(env).ray_token


def test_the_service_finds_the_token_where_ray_start_does(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    elsewhere = tmp_path / "token"
    elsewhere.write_text("from-path\n")
    assert ray_token_of({"HOME": str(home)}) == "from-home"  # no RAY_AUTH_MODE, as in the recipe
    assert ray_token_of({"HOME": str(home), "RAY_AUTH_MODE": "token"}) == "from-home"
    assert ray_token_of({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(elsewhere)}) == "from-path"
    assert ray_token_of({"HOME": str(home), "RAY_AUTH_TOKEN": "given"}) == "given"
    assert ray_token_of({"HOME": str(home), "RAY_AUTH_MODE": "disabled"}) is None
    assert ray_token_of({"HOME": str(tmp_path)}) is None  # no token anywhere: auth is off


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token", "RAY_AUTH_MODE=token, but there is no Ray token: set RAY_AUTH_TOKEN, or"),
        ("tokens", "RAY_AUTH_MODE must be token or disabled; got 'tokens'"),
    ],
)
def test_a_token_mode_without_a_token_is_refused_saying_where_to_put_one(tmp_path, mode, expected):
    from service.server.settings import SettingsError

    with pytest.raises(SettingsError, match=re.escape(expected)):
        ray_token_of({"HOME": str(tmp_path), "RAY_AUTH_MODE": mode})
