"""The shipped Prometheus rules name only metrics the services export."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.cli import migrate_all
from services.qa_tracker.app import create_app as qa_app
from services.qa_tracker.settings import QaSettings
from services.scp_listener.app import create_app as scp_app
from services.scp_listener.settings import ScpSettings
from tests.support import REPO

RULES = REPO / "deploy" / "prometheus" / "rtops-rules.yaml"
# Functions, keywords and label names that appear in expressions beside metric names.
_PROMQL = {"max", "sum", "by", "rate", "increase", "durable", "subject", "outcome", "reason"}
_PROMQL |= {"status", "job"}


def exported_metrics(tmp_path: Path, base_settings: dict[str, object]) -> set[str]:
    names: set[str] = set()
    settings_kw = {**base_settings, "database_url": None, "var_dir": tmp_path}
    scp_settings, qa_settings = ScpSettings(**settings_kw), QaSettings(**settings_kw)  # type: ignore[arg-type]
    migrate_all(scp_settings, ["scp_listener", "qa_tracker"])
    for app in (
        scp_app(scp_settings, background=False),
        qa_app(qa_settings, background=False),
    ):
        app.state.runtime.consumer_metrics  # noqa: B018 - what run_consumer registers
        text = _scrape(app)
        names |= {m.group(1) for m in re.finditer(r"^# TYPE (\w+) (\w+)", text, re.M)}
        names |= {f"{m.group(1)}_total" for m in re.finditer(r"^# TYPE (\w+) counter", text, re.M)}
        app.state.runtime.close()
    return names


def _scrape(app: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app.state.runtime.registry).decode()  # type: ignore[attr-defined]


def test_every_alert_names_an_exported_metric(
    tmp_path: Path, base_settings: dict[str, object]
) -> None:
    exported = exported_metrics(tmp_path, base_settings)
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", rule["expr"])
        metrics = {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if w not in _PROMQL}
        unknown = metrics - exported
        assert not unknown, f"{rule['alert']} names {unknown}, which no service exports"
        assert rule["annotations"]["summary"]
