"""`rtops run` (what `make run` starts): NATS, migrations, every service; Ctrl-C stops all.

One end-to-end test through the real supervisor process, on whichever backends the
environment names (embedded NATS and SQLite by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from services.scp_listener.settings import ScpSettings
from shared.natsd import free_port
from tests import dicom_factories as f
from tests.support import REPO, drop_test_schema, pynetdicom_echo, pynetdicom_store, wait_for


def test_run_starts_the_suite_and_ctrl_c_stops_it(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    dicom_port, http_port = free_port(), free_port()
    schema = isolation["database_schema"]
    env = {
        **os.environ,
        "RTOPS_VAR_DIR": str(tmp_path / "var"),
        "RTOPS_SCP_PORT": str(dicom_port),
        "RTOPS_SCP_HTTP_PORT": str(http_port),
        "RTOPS_SCP_HOST": "127.0.0.1",
        "RTOPS_SCP_HTTP_HOST": "127.0.0.1",
        "RTOPS_DATABASE_SCHEMA": schema,
        "RTOPS_STREAM_NAME": isolation["stream_name"],
        "RTOPS_SUBJECT_PREFIX": isolation["subject_prefix"],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = wait_for(
            lambda: _ready(http_port),
            timeout=60,
            interval=0.2,
            message="the suite's SCP to be ready",
        )
        assert ready
        assert pynetdicom_echo(dicom_port).Status == 0
        record = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
        assert pynetdicom_store(dicom_port, [record]) == [0]

        # `rtops token` prints a token the running suite accepts.
        token = subprocess.run(
            [sys.executable, "-m", "services.cli", "token", "--role", "physicist", "--user", "e2e"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        listing = httpx.get(
            f"http://127.0.0.1:{http_port}/v1/objects", headers={"Authorization": f"Bearer {token}"}
        )
        assert listing.status_code == 200 and len(listing.json()["items"]) == 1

        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the supervisor started no processes"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "rtops: stopped" in out
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        drop_test_schema(ScpSettings(database_schema=schema, var_dir=tmp_path / "var"))


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
