"""Errors a user can act on (issue 9): a taken port, a second suite on one var dir, a signing
key setting that cannot work, `rtops token` away from the suite. Each is one line naming what
to change, and a non-zero exit without a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.scp_listener.settings import ScpSettings
from shared.auth import Authenticator, dev_signing_key
from shared.natsd import EmbeddedNats, NatsDidNotStart
from shared.settings import RtopsSettings, SettingError
from tests.support import REPO, free_port
from tests.test_suite_run import _ready, running_suite


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on (all interfaces, as the services bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTOPS_")}
    env.update(
        RTOPS_VAR_DIR=str(tmp_path / "var"),
        RTOPS_SCP_PORT=str(free_port()),
        RTOPS_SCP_HTTP_PORT=str(free_port()),
        RTOPS_QA_HTTP_PORT=str(free_port()),
        XDG_RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 60):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("service", "setting"),
    [
        ("scp_listener", "RTOPS_SCP_PORT"),
        ("scp_listener", "RTOPS_SCP_HTTP_PORT"),
        ("qa_tracker", "RTOPS_QA_HTTP_PORT"),
    ],
)
def test_a_service_whose_port_is_taken_says_which_setting_to_change(
    tmp_path: Path, taken_port: int, service: str, setting: str
) -> None:
    env = clean_env(tmp_path, RTOPS_NATS_URL="nats://127.0.0.1:1", **{setting: str(taken_port)})
    out = run(["-m", f"services.{service}"], env)
    assert out.returncode == 2
    assert out.stderr == (
        f"{service}: port {taken_port} is in use: set {setting} to a free port\n"
    ), out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("setting", ["RTOPS_SCP_PORT", "RTOPS_SCP_HTTP_PORT", "RTOPS_QA_HTTP_PORT"])
def test_run_with_a_port_taken_stops_before_starting_anything(
    tmp_path: Path, taken_port: int, setting: str
) -> None:
    out = run(["-m", "services.cli", "run"], clean_env(tmp_path, **{setting: str(taken_port)}))
    assert out.returncode == 1
    assert f"rtops: port {taken_port} is in use: set {setting} to a free port\n" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "embedded NATS" not in out.stdout  # refused before NATS and the migrations
    assert not (tmp_path / "var" / "nats").exists()


def test_run_refuses_two_services_on_one_port(tmp_path: Path) -> None:
    port = str(free_port())
    env = clean_env(tmp_path, RTOPS_SCP_HTTP_PORT=port, RTOPS_QA_HTTP_PORT=port)
    out = run(["-m", "services.cli", "run"], env)
    assert out.returncode == 1
    assert "RTOPS_SCP_HTTP_PORT and RTOPS_QA_HTTP_PORT are both" in out.stderr, out.stderr


def test_run_names_the_service_that_died(tmp_path: Path) -> None:
    registry = tmp_path / "devices.yaml"
    registry.write_text("devices:\n  - ae_title: LINAC1\n    role: Linac\n")
    env = clean_env(tmp_path, RTOPS_SCP_DEVICE_REGISTRY=str(registry))
    out = run(["-m", "services.cli", "run"], env, timeout=120)
    assert out.returncode == 1
    assert (
        f"scp_listener: {registry} line 3: role 'Linac' is not allowed; use one of linac, "
        "ct_simulator, tps, ois, other; roles are lower case: 'linac'?\n"
    ) in out.stderr, out.stderr
    assert "rtops: scp_listener exited with status 2" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("rtops: stopped")


def test_embedded_nats_on_a_taken_port_says_so(tmp_path: Path) -> None:
    port = free_port()
    nats = EmbeddedNats(tmp_path / "nats", port=port)  # free when chosen, taken at start
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with pytest.raises(NatsDidNotStart, match=rf"^port {port} is in use: the embedded NATS"):
            nats.start()


def test_embedded_nats_on_a_port_of_its_own_choosing_taken_meanwhile_takes_another(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        # The configured port is taken, so it chooses one ... which is taken before it starts.
        nats = EmbeddedNats(tmp_path / "nats", port=busy.getsockname()[1])
        assert nats.port_chosen
        chosen = nats.port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", chosen))
            sock.listen()
            nats.start()
        try:
            assert nats.port != chosen
            assert (tmp_path / "nats" / "url").read_text().strip() == nats.url
        finally:
            nats.stop()


def test_a_second_supervisor_on_the_same_var_dir_is_refused_at_once(
    tmp_path: Path, isolation: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    runtime = tmp_path / "runtime"
    with running_suite(tmp_path, isolation, XDG_RUNTIME_DIR=str(runtime)) as suite:
        second_env = {
            **suite.env,
            "RTOPS_SCP_PORT": str(free_port()),
            "RTOPS_SCP_HTTP_PORT": str(free_port()),
            "RTOPS_QA_HTTP_PORT": str(free_port()),
        }
        started = time.monotonic()
        out = run(["-m", "services.cli", "run"], second_env)
        # "At once": before it starts anything (the output below), not waiting on the lock
        # (which would end in run's timeout). The bound only catches a wait: the interpreter's
        # start alone took 15 s once in CI on a loaded 2-core machine.
        assert time.monotonic() - started < 30
        assert out.returncode == 1
        var = (tmp_path / "var").resolve()
        assert out.stderr == (
            f"rtops: another `rtops run` (pid {suite.proc.pid}) is already running on {var}: "
            "stop it first (Ctrl-C in its terminal), or set RTOPS_VAR_DIR to another directory "
            "to run a second suite\n"
        )
        assert "embedded NATS" not in out.stdout and "database at head" not in out.stdout
        assert _ready(suite.scp_http) and suite.proc.poll() is None

        # `rtops token` from another directory, without RTOPS_VAR_DIR, finds the running
        # suite's key (its record under XDG_RUNTIME_DIR) and creates nothing there.
        elsewhere = tmp_path_factory.mktemp("elsewhere")  # no var/ in it nor above
        env = {k: v for k, v in suite.env.items() if k != "RTOPS_VAR_DIR"}
        token = run(
            ["-m", "services.cli", "token", "--role", "admin", "--user", "x"], env, elsewhere
        )
        assert token.returncode == 0, token.stderr
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        assert httpx.get(f"{suite.scp_http}/v1/objects", headers=headers).status_code == 200
        assert list(elsewhere.iterdir()) == []
    # Stopped (killed): its record is stale and is no longer used.
    stale = run(["-m", "services.cli", "token", "--role", "admin", "--user", "x"], env, elsewhere)
    assert stale.returncode == 1 and "no running suite found" in stale.stderr


def test_a_lock_held_by_a_dead_supervisor_is_free(tmp_path: Path) -> None:
    from services.cli import lock_var_dir, suite_running

    var = tmp_path / "var"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from services.cli import lock_var_dir; import time; "
            f"h = lock_var_dir(__import__('pathlib').Path({str(var)!r})); print('x', flush=True); "
            "time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "x\n"
        assert suite_running(var)
        assert (var / "rtops.lock").read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()
    assert not suite_running(var)
    lock_var_dir(var).close()  # the OS released it with the process


def test_token_without_a_suite_says_how_to_point_at_one_and_creates_nothing(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path)
    del env["RTOPS_VAR_DIR"]
    out = run(["-m", "services.cli", "token", "--role", "admin", "--user", "x"], env, tmp_path)
    assert out.returncode == 1
    assert out.stderr == (
        f"rtops: no running suite found and no var/jwt.key in {tmp_path} or above; nothing was "
        "created: run `rtops token` from the directory where `make run` runs, or set "
        "RTOPS_VAR_DIR to that suite's var directory (or RTOPS_DEV_SIGNING_KEY_FILE to its "
        "jwt.key)\n"
    )
    assert list(tmp_path.iterdir()) == []

    named = run(
        ["-m", "services.cli", "token", "--role", "admin", "--user", "x"],
        {**env, "RTOPS_VAR_DIR": str(tmp_path / "nowhere")},
        tmp_path,
    )
    assert named.returncode == 1 and "no signing key in RTOPS_VAR_DIR=" in named.stderr
    assert list(tmp_path.iterdir()) == []


def test_token_finds_var_jwt_key_upward_and_loads_no_database_or_nats(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "jwt.key"
    settings = RtopsSettings(var_dir=tmp_path / "var")
    key = dev_signing_key(settings)  # what `rtops run` creates
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    env = clean_env(tmp_path)
    del env["RTOPS_VAR_DIR"]
    code = (
        "import sys, jwt; from services.cli import main; "
        "import io, contextlib; buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf): main(['token', '--role', 'admin', '--user', 'x'])\n"
        f"print(jwt.decode(buf.getvalue().strip(), {key!r}, algorithms=['HS256'], "
        "audience='rtops')['sub'])\n"
        "print(sorted(m for m in ('sqlalchemy', 'nats', 'pydicom', 'uvicorn') if m in sys.modules))"
    )
    out = run(["-c", code], {**env, "PYTHONPATH": str(REPO)}, deep)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["x", "[]"]
    assert key_file.read_text() == key and sorted(p.name for p in deep.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (
            "var/jwt.key",
            "RTOPS_DEV_SIGNING_KEY='var/jwt.key' looks like a path, but it is the key "
            "itself: set RTOPS_DEV_SIGNING_KEY_FILE=var/jwt.key instead",
        ),
        ("/etc/rtops/secrets/signing-key.pem", "looks like a path"),
        ("jwt.key", "looks like a path"),
        ("too-short-a-secret", "RTOPS_DEV_SIGNING_KEY is 18 bytes; an HS256 key needs at least 32"),
        ("/etc/rtops/jwt", "is 14 bytes and looks like a path"),
    ],
)
def test_an_inline_signing_key_that_cannot_work_is_refused(
    tmp_path: Path, value: str, words: str
) -> None:
    settings = RtopsSettings(var_dir=tmp_path / "var", dev_signing_key=value)
    with pytest.raises(SettingError) as refused:
        Authenticator(settings)
    message = str(refused.value)
    assert message.startswith(words) if words.startswith("RTOPS") else words in message
    assert not (tmp_path / "var").exists()


def test_a_service_with_a_bad_signing_key_exits_with_one_line(tmp_path: Path) -> None:
    env = clean_env(tmp_path, RTOPS_DEV_SIGNING_KEY="var/jwt.key")
    out = run(["-m", "services.qa_tracker"], env)
    assert out.returncode == 2
    assert out.stderr.startswith("qa_tracker: RTOPS_DEV_SIGNING_KEY='var/jwt.key' looks like")
    assert out.stderr.count("\n") == 1


def test_the_signing_key_file_setting(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "rtops.key"
    settings = ScpSettings(var_dir=tmp_path / "var", dev_signing_key_file=key_file)
    with pytest.raises(SettingError, match=f"RTOPS_DEV_SIGNING_KEY_FILE={key_file}: no such file"):
        Authenticator(settings)
    key_file.parent.mkdir()
    key_file.write_text("k" * 40 + "\n")
    assert dev_signing_key(settings) == "k" * 40
    key_file.write_text("short")
    with pytest.raises(SettingError, match="is 5 bytes; an HS256 key needs at least 32"):
        dev_signing_key(settings)
    good = "a-perfectly-fine-base64/key+with/slashes0123456789"
    assert dev_signing_key(ScpSettings(dev_signing_key=good)) == good


@pytest.mark.parametrize(
    ("service", "env", "line"),
    [
        ("qa_tracker", {"RTOPS_QA_HTTP_PORT": "abc"}, "qa_tracker: RTOPS_QA_HTTP_PORT: "),
        (
            "scp_listener",
            {"RTOPS_CLINIC_CALENDAR": '{"workdays": ["monday"]}'},
            "scp_listener: RTOPS_CLINIC_CALENDAR: ",
        ),
    ],
)
def test_an_invalid_setting_is_one_line_naming_it(
    tmp_path: Path, service: str, env: dict[str, str], line: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=REPO,
        env={**os.environ, "RTOPS_VAR_DIR": str(tmp_path / "var"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(line) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
