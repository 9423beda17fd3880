"""The device registry: mistakes named by file and line, reloads without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from services.scp_listener.devices import DeviceRegistry, RegistryError, load_registry
from tests.support import REPO, RunningScp, free_port, pynetdicom_echo, wait_for

GOOD = """devices:
  - ae_title: TRUEBEAM1
    role: linac
    machine: TrueBeam1
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD + "  - ae_title: CT1\n    role: CT\n",
            "line 6: role 'CT' is not allowed; use one of linac, ct_simulator, tps, ois, other",
        ),
        (
            "devices:\n  - ae_title: LINAC1\n    role: Linac\n",
            "line 3: role 'Linac' is not allowed; use one of linac, ct_simulator, tps, ois, "
            "other; roles are lower case: 'linac'?",
        ),
        (
            "devices:\n  - ae_title: A\n    role: tps\n  bad: [\n",
            "line 4, column 3: not valid YAML",
        ),
        (
            GOOD + "    rol: linac\n",
            "line 5: unknown key 'rol'; the keys are ae_title, role, machine, site",
        ),
        (
            GOOD + "  - ae_title: TRUEBEAM1\n    role: ois\n",
            "line 5: AE title 'TRUEBEAM1' is listed twice (first on line 2)",
        ),
        ("devices:\n  - ae_title: X\n", "line 2: 'role' is missing; it is one of linac"),
        ("devices: []\n", "line 1: the registry lists no devices"),
        ("", "'devices' is missing"),
        (
            "devices:\n  - ae_title: WAY_TOO_LONG_AE_TITLE\n    role: tps\n",
            "line 2: ae_title 'WAY_TOO_LONG_AE_TITLE'",
        ),
    ],
)
def test_a_mistake_names_the_file_the_line_and_what_is_allowed(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError) as refused:
        load_registry(path)
    assert str(refused.value).startswith(f"{path}"), refused.value
    assert message in str(refused.value), refused.value


def test_a_missing_registry_says_which_setting_names_it(tmp_path: Path) -> None:
    with pytest.raises(
        RegistryError, match=r"not found: create it .* or set RTOPS_SCP_DEVICE_REGISTRY"
    ):
        load_registry(tmp_path / "nope.yaml")


def test_the_development_registry_loads() -> None:
    assert {"TRUEBEAM1", "CTSIM1", "TPS1"} <= set(
        load_registry(REPO / "services" / "scp_listener" / "devices.yaml")
    )


def test_a_bad_edit_keeps_the_registry_in_force_and_logs_why(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD)
    registry = DeviceRegistry(path)
    seen: list[list[str]] = []
    registry.subscribe(lambda devices: seen.append(sorted(devices)))
    path.write_text(GOOD.replace("role: linac", "role: Linac"))
    with capture_logs() as logs:
        assert registry.reload_if_changed() is False
    assert sorted(registry.devices) == ["TRUEBEAM1"] and seen == [["TRUEBEAM1"]]
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert entry["event"] == "device registry not reloaded: the registry in force is kept"
    assert "line 3: role 'Linac' is not allowed" in entry["error"]
    assert registry.reload_if_changed() is False  # the same bad file is not reported again

    path.write_text(GOOD + "  - ae_title: CTSIM2\n    role: ct_simulator\n")
    assert registry.reload_if_changed() is True
    assert seen[-1] == ["CTSIM2", "TRUEBEAM1"]
    assert registry.case_hint("ctsim2") == "CTSIM2" and registry.case_hint("OTHER") is None


def test_the_running_scp_reloads_an_edited_registry(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD)
    scp = start_scp(scp_device_registry=path, scp_device_registry_poll_s=0.05)
    assert pynetdicom_echo(scp.dicom_port).Status == 0
    assert pynetdicom_echo(scp.dicom_port, calling="NEWLINAC").is_rejected

    path.write_text(GOOD + "  - ae_title: NEWLINAC\n    role: linac\n")
    wait_for(lambda: "NEWLINAC" in scp.app.state.device_registry.devices, message="registry reload")
    assert pynetdicom_echo(scp.dicom_port, calling="NEWLINAC").Status == 0

    # A bad edit: the registry in force stays, both devices keep working.
    path.write_text("devices:\n  - ae_title: NEWLINAC\n    role: LINAC\n")
    time.sleep(0.3)
    assert pynetdicom_echo(scp.dicom_port, calling="NEWLINAC").Status == 0
    assert pynetdicom_echo(scp.dicom_port).Status == 0

    path.write_text("devices:\n  - ae_title: NEWLINAC\n    role: linac\n")
    wait_for(lambda: "TRUEBEAM1" not in scp.app.state.device_registry.devices, message="reload")
    assert pynetdicom_echo(scp.dicom_port).is_rejected


def scp_env(tmp_path: Path, registry: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTOPS_")}
    env.update(
        RTOPS_VAR_DIR=str(tmp_path / "var"),
        RTOPS_SCP_PORT=str(free_port()),
        RTOPS_SCP_HTTP_PORT=str(free_port()),
        RTOPS_SCP_HOST="127.0.0.1",
        RTOPS_SCP_DEVICE_REGISTRY=str(registry),
        RTOPS_SCP_DEVICE_REGISTRY_POLL_S="3600",  # only SIGHUP reloads in this test
        RTOPS_NATS_URL="nats://127.0.0.1:1",
    )
    return env


def test_the_scp_process_with_a_bad_registry_exits_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - ae_title: LINAC1\n    role: Linac\n")
    out = subprocess.run(
        [sys.executable, "-m", "services.scp_listener"],
        cwd=REPO,
        env=scp_env(tmp_path, path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr == (
        f"scp_listener: {path} line 3: role 'Linac' is not allowed; use one of linac, "
        "ct_simulator, tps, ois, other; roles are lower case: 'linac'?\n"
    )
    assert "Traceback" not in out.stdout


def test_sighup_reloads_the_registry_of_the_scp_process(tmp_path: Path) -> None:
    from services.scp_listener.settings import ScpSettings
    from shared.db import make_engine, migrate

    path = tmp_path / "devices.yaml"
    path.write_text(GOOD)
    env = scp_env(tmp_path, path)
    settings = ScpSettings(var_dir=tmp_path / "var")
    engine = make_engine(settings, "scp_listener")
    migrate(engine, settings, "scp_listener", REPO / "services" / "scp_listener" / "migrations")
    engine.dispose()
    log = (tmp_path / "scp.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.scp_listener"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    port = int(env["RTOPS_SCP_PORT"])
    try:
        wait_for(lambda: "DICOM SCP listening" in (tmp_path / "scp.log").read_text(), 30)
        assert pynetdicom_echo(port, calling="HUPLINAC").is_rejected
        path.write_text(GOOD + "  - ae_title: HUPLINAC\n    role: linac\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "device registry reloaded" in (tmp_path / "scp.log").read_text(), 10)
        assert pynetdicom_echo(port, calling="HUPLINAC").Status == 0
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
