"""`rtops run` (what `make run` starts): NATS, migrations, every service; Ctrl-C stops all.

End-to-end tests through the real supervisor process, on whichever backends the environment
names (embedded NATS and SQLite by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psutil
from sqlalchemy.exc import OperationalError

from services.cli import existing_services
from services.scp_listener.settings import ScpSettings
from shared.db import drop_schema, make_engine
from tests import dicom_factories as f
from tests.support import REPO, free_port, pynetdicom_echo, pynetdicom_store, storescu, wait_for


@dataclass
class Suite:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    dicom_port: int
    scp_http: str
    qa_http: str
    log: Path
    log_from: int = 0  # where this start's lines begin in a log a retried start shares

    def token(self, role: str, user: str) -> dict[str, str]:
        """A token printed by `rtops token`, as staff would get one."""
        token = subprocess.run(
            [sys.executable, "-m", "services.cli", "token", "--role", role, "--user", user],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"Authorization": f"Bearer {token}"}


def suite_env(
    tmp_path: Path, isolation: dict[str, str], **extra: str
) -> tuple[dict[str, str], int, int, int]:
    """The environment of a suite of the test's own, on free ports."""
    dicom_port, scp_port, qa_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RTOPS_VAR_DIR": str(tmp_path / "var"),
        "RTOPS_SCP_PORT": str(dicom_port),
        "RTOPS_SCP_HTTP_PORT": str(scp_port),
        "RTOPS_QA_HTTP_PORT": str(qa_port),
        "RTOPS_SCP_HOST": "127.0.0.1",
        "RTOPS_SCP_HTTP_HOST": "127.0.0.1",
        "RTOPS_QA_HTTP_HOST": "127.0.0.1",
        "RTOPS_DATABASE_SCHEMA_PREFIX": isolation["database_schema_prefix"],
        "RTOPS_STREAM_NAME": isolation["stream_name"],
        "RTOPS_SUBJECT_PREFIX": isolation["subject_prefix"],
    }
    # Every other service rtops run starts (billing, ...) on a free port of its own too.
    for name in existing_services():
        if name not in ("scp_listener", "qa_tracker"):
            prefix = f"RTOPS_{name.upper()}_HTTP"
            env[f"{prefix}_PORT"] = str(free_port())
            env[f"{prefix}_HOST"] = "127.0.0.1"
    env.update(extra)
    return env, dicom_port, scp_port, qa_port


@contextmanager
def running_suite(tmp_path: Path, isolation: dict[str, str], **extra: str) -> Iterator[Suite]:
    # A port taken between the test choosing it and a service binding it ends the suite at
    # start ("port ... is in use"): start it again on other ports over the same var dir and
    # schemas, as an operator would.
    try:
        for _attempt in range(3):
            suite = _start_suite(tmp_path, isolation, extra)
            try:
                _wait_until_ready(suite)
            except _PortTaken:
                _stop_suite(suite)
                continue
            except BaseException:
                _stop_suite(suite)
                raise
            try:
                yield suite
            finally:
                _stop_suite(suite)
            return
        raise AssertionError(f"rtops run found a port taken three times; see {suite.log}")
    finally:
        drop_suite_schemas(tmp_path, isolation)


class _PortTaken(Exception):
    pass


def _start_suite(tmp_path: Path, isolation: dict[str, str], extra: dict[str, str]) -> Suite:
    env, dicom_port, scp_port, qa_port = suite_env(tmp_path, isolation, **extra)
    # A file, not a pipe: nobody reads a pipe while the test runs, and a full one would block
    # every service writing its logs to it.
    log_path = tmp_path / "suite.log"
    with log_path.open("a") as log:
        log_from = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Suite(
        proc,
        env,
        dicom_port,
        f"http://127.0.0.1:{scp_port}",
        f"http://127.0.0.1:{qa_port}",
        log_path,
        log_from,
    )


def _wait_until_ready(suite: Suite) -> None:
    """Both HTTP sides answer /readyz; a supervisor that exits first fails at once, with the
    end of its log in the message (pytest's tmp dir, where the log is, goes with the run)."""

    def tail() -> str:
        with suite.log.open("rb") as log:
            log.seek(suite.log_from)
            return log.read().decode(errors="replace")[-4000:]

    for url in (suite.scp_http, suite.qa_http):
        deadline = time.monotonic() + 120
        while not _ready(url):
            if suite.proc.poll() is not None:
                words = tail()
                if "is in use" in words or "address already in use" in words.lower():
                    raise _PortTaken(words)
                raise AssertionError(
                    f"rtops run exited with {suite.proc.returncode} before {url} was ready; "
                    f"its log ends:\n{words}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}/readyz not ready after 120 s; the log ends:\n{tail()}")
            time.sleep(0.2)


def _stop_suite(suite: Suite) -> None:
    proc = suite.proc
    if proc.poll() is None:  # a failed test: the services die with the supervisor
        try:
            services = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            services = []
        proc.kill()
        proc.wait()
        # ... but only after their own shutdown, which still uses their schemas: dropping
        # those meanwhile deadlocks on PostgreSQL.
        _gone, alive = psutil.wait_procs(services, timeout=30)
        for straggler in alive:
            straggler.kill()


def drop_suite_schemas(tmp_path: Path, isolation: dict[str, str]) -> None:
    """A test suite's PostgreSQL schemas (SQLite files go with the tmp dir)."""
    settings = ScpSettings(
        var_dir=tmp_path / "var", database_schema_prefix=isolation["database_schema_prefix"]
    )
    for service in existing_services():
        engine = make_engine(settings, service)
        for attempt in range(3):
            try:
                drop_schema(engine, settings, service)
                break
            except OperationalError:  # a deadlock with a service still stopping: again
                if attempt == 2:
                    raise
                time.sleep(1)
        engine.dispose()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_the_supervisor_stops_every_service(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    with running_suite(tmp_path, isolation) as suite:
        children = psutil.Process(suite.proc.pid).children(recursive=True)
        suite.proc.kill()  # SIGKILL: no chance to stop anything itself
        suite.proc.wait()
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"left running: {alive}"


def test_run_starts_the_suite_and_ctrl_c_stops_it(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    with running_suite(tmp_path, isolation) as suite:
        assert pynetdicom_echo(suite.dicom_port).Status == 0
        record = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
        assert pynetdicom_store(suite.dicom_port, [record]) == [0]

        # `rtops token` prints a token the running suite accepts.
        listing = httpx.get(f"{suite.scp_http}/v1/objects", headers=suite.token("physicist", "e2e"))
        assert listing.status_code == 200 and len(listing.json()["items"]) == 1

        children = psutil.Process(suite.proc.pid).children(recursive=True)
        assert len(children) >= 2, "expected the SCP and the QA tracker (and NATS if embedded)"
        suite.proc.send_signal(signal.SIGINT)
        assert suite.proc.wait(timeout=60) == 0, suite.log.read_text()[-3000:]
        assert "rtops: stopped" in suite.log.read_text()
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running: {alive}"


def test_ctrl_c_at_a_terminal_reaches_the_supervisor_alone(
    tmp_path: Path, isolation: dict[str, str]
) -> None:
    """`make run` runs the supervisor under a shell or make that shares the terminal: Ctrl-C
    must stop the suite cleanly without interrupting them too (make then reported exit 130)."""
    import pty

    env, _dicom, scp_port, qa_port = suite_env(tmp_path, isolation)
    log = tmp_path / "suite.log"
    script = f'"{sys.executable}" -m services.cli run > "{log}" 2>&1; echo "parent saw $?"'
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a shell in the foreground of a terminal of its own
        os.chdir(REPO)
        os.execve("/bin/sh", ["sh", "-c", script], env)
    output = b""
    try:
        for port in (scp_port, qa_port):
            wait_for(lambda port=port: _ready(f"http://127.0.0.1:{port}"), timeout=120)
        os.write(terminal, b"\x03")  # what the terminal sends for Ctrl-C
        deadline = time.monotonic() + 60
        while b"parent saw" not in output and time.monotonic() < deadline:
            try:
                output += os.read(terminal, 1024)
            except OSError:  # the child closed the terminal
                break
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
        drop_suite_schemas(tmp_path, isolation)
    assert b"parent saw 0" in output, output.decode(errors="replace")
    assert "rtops: stopped" in (tmp_path / "suite.log").read_text()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it once it has ended."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


# A past week (Mon 2026-11-02 .. Fri 11-06), so that every due time has passed whatever today is.
WEEK = "2026-W45"
DAYS = ["20261102", "20261103", "20261104", "20261105", "20261106"]


def test_a_week_through_dcmtk_gives_the_exact_weekly_summary(
    tmp_path: Path, isolation: dict[str, str], dcmtk: dict[str, str]
) -> None:
    plan = f.rt_plan(fractions=25, reviewer="Oncologist^Olga")
    plan_file = f.write(plan, tmp_path / "plan.dcm")
    linac_files: list[Path] = []
    for number, day in enumerate(DAYS, start=1):
        cbct = f.cbct_series(n_slices=3, acquisition_date=day, acquisition_time="075500")
        shift = (7.0, 0.0, 0.0) if number == 5 else (1.0, -1.0, 0.5)  # Friday beyond 5 mm
        reg = f.spatial_registration(
            fixed_for_uid=str(plan.FrameOfReferenceUID),
            moving_for_uid=str(cbct[0].FrameOfReferenceUID),
            moving_series_uid=str(cbct[0].SeriesInstanceUID),
            moving_instance_uids=[str(s.SOPInstanceUID) for s in cbct],
            translation_mm=shift,
            content_date=day,
            content_time="075800",
        )
        record = f.treatment_record(
            plan_uid=str(plan.SOPInstanceUID),
            fraction_number=number,
            treatment_date=day,
            treatment_time="080000",
        )
        folder = tmp_path / day
        linac_files += [
            *f.write_series(cbct, folder),
            f.write(reg, folder / "reg.dcm"),
            f.write(record, folder / "rec.dcm"),
        ]

    with running_suite(
        tmp_path, isolation, RTOPS_SCP_SERIES_QUIET_S="0.5", RTOPS_SCP_SWEEP_INTERVAL_S="0.2"
    ) as suite:
        assert (
            storescu(dcmtk["storescu"], suite.dicom_port, [plan_file], calling="TPS1").returncode
            == 0
        )
        sent = storescu(dcmtk["storescu"], suite.dicom_port, linac_files)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        reader = suite.token("physicist", "pat.physicist")
        url = f"{suite.qa_http}/v1/fractions"

        def fractions() -> list[dict[str, object]]:
            items = httpx.get(url, params={"limit": 50}, headers=reader).json()["items"]
            complete = len(items) == 5 and all(i["imaged"] and i["correction_mm"] for i in items)
            return sorted(items, key=lambda i: i["fraction_number"]) if complete else []

        items = wait_for(fractions, timeout=60, interval=0.3, message="5 imaged fractions")
        assert [i["review_status"] for i in items] == ["overdue"] * 5
        assert [i["override_required"] for i in items] == [False] * 4 + [True]

        # The embedded signer's user name is the physician's DICOM name (issue 15: only the
        # fraction's physician, or one covering for them, may review it).
        physician = suite.token("physician", "Oncologist^Olga")
        due = {i["fraction_number"]: datetime.fromisoformat(str(i["due_at"])) for i in items}
        # Documented today for a past week, so backdated (issue 15: a reason and the system):
        # Monday dated on time, Tuesday a second late, Wednesday dated on time with a
        # rejection, Thursday never, Friday dated on time with the override acknowledged.
        backdated = {"backdate_reason": "entered after the fact", "documented_in": "ARIA"}
        posts = {
            1: {"decision": "approved", "reviewed_at": due[1] - timedelta(hours=2)},
            2: {"decision": "approved", "reviewed_at": due[2] + timedelta(seconds=1)},
            3: {"decision": "rejected", "reviewed_at": due[3] - timedelta(minutes=1)},
            5: {
                "decision": "approved",
                "reviewed_at": due[5],
                "override_reason": "shift confirmed on CBCT; new bladder protocol",
            },
        }
        ids = {i["fraction_number"]: i["id"] for i in items}
        for number, body in posts.items():
            body = {**body, **backdated, "reviewed_at": body["reviewed_at"].isoformat()}
            response = httpx.post(f"{url}/{ids[number]}/reviews", json=body, headers=physician)
            assert response.status_code == 201, response.text

        summary = httpx.get(
            f"{suite.qa_http}/v1/compliance/weekly", params={"week": WEEK}, headers=reader
        ).json()
        expected = {
            "imaged_fractions": 5,
            "reviewed_on_time": 0,
            "reviewed_backdated": 3,
            "reviewed_late": 1,
            "overdue": 1,
            "pending": 0,
            "overrides_required": 1,
            "overrides_documented": 1,
            "compliance_pct": 0.0,
            "attested_compliance_pct": 60.0,
        }
        assert {k: summary[k] for k in expected} == expected
        assert summary["by_machine"]["TrueBeam1"]["imaged_fractions"] == 5
        assert summary["by_physician"]["Oncologist^Olga"]["attested_compliance_pct"] == 60.0
        flags = httpx.get(f"{suite.qa_http}/v1/flags", headers=reader).json()
        kinds = sorted(flag["kind"] for group in flags["physicians"] for flag in group["flags"])
        assert kinds == ["overdue_review", "rejected_without_follow_up"]
