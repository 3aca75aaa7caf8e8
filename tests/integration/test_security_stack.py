"""Issue 12, item 2, end to end: the password in the service's MLflow URI stays out of sight.

It reaches the sweep's job in its environment and nowhere else: not the job's command line, its
output, the sweep's files, the service's answers or its log (the stack: tests/integration/stack.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit


def test_the_mlflow_password_is_in_no_file_command_line_or_answer(served_smoke):
    stack, view = served_smoke
    assert view["state"] == "succeeded", view
    password = urlsplit(stack.api_env["DMSWEEP_MLFLOW_URI"]).password
    assert password
    jobs = stack.ray_jobs()
    info = jobs.get_job_info(view["ray_job_id"])
    assert password not in info.entrypoint and "mlflow" not in info.entrypoint
    assert password not in jobs.get_job_logs(view["ray_job_id"])
    # the run link is the public one (the trials' runs are in MLflow: test_service_stack.py)
    assert view["mlflow_run_url"].startswith(f"{stack.mlflow.url}/#/experiments/")
    with stack.client() as client:
        answers = [client.get(path).text for path in ("/sweeps", f"/sweeps/{view['id']}")]
    assert all(password not in text for text in answers)
    storage = stack.folder / "storage"
    leaked = [
        str(path)
        for path in storage.rglob("*")
        if path.is_file() and password.encode() in path.read_bytes()
    ]
    assert leaked == []
    assert password not in stack.api.log.read_text()
