"""Billing's settings: what the engine receives, and the Kubernetes manifest's practice
settings are real ones."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from services.billing.settings import BillingSettings
from tests.support import REPO


def test_the_engine_gets_the_practice_settings(tmp_path: Path) -> None:
    settings = BillingSettings(
        var_dir=tmp_path,
        billing_place_of_service="hospital",
        billing_components=frozenset({"professional"}),
        billing_bid_break_h=4.5,
        billing_payer={"id": "bcbs_nc", "medicare": False, "legacy_freestanding_codes": "cpt"},  # type: ignore[arg-type]
        clinic_timezone="America/Chicago",
    )
    engine = settings.engine_settings()
    assert (engine.place_of_service, engine.bills) == ("hospital", frozenset({"professional"}))
    assert engine.bid_break == timedelta(hours=4.5)
    assert str(engine.zone) == "America/Chicago"
    payer = settings.payer()
    assert (payer.id, payer.medicare, payer.legacy_freestanding_codes) == ("bcbs_nc", False, "cpt")
    assert settings.billing_http_port == 8004
    assert settings.rules().version  # the bundled rules file


def test_a_rules_file_of_the_practice_is_read(tmp_path: Path) -> None:
    bundled = REPO / "services" / "billing" / "rules" / "charge_rules.yaml"
    own = tmp_path / "rules.yaml"
    own.write_text(bundled.read_text().replace('version: "', 'version: "local-', 1))
    rules = BillingSettings(var_dir=tmp_path, billing_rules=own).rules()
    assert rules.version.startswith("local-")


def test_the_kubernetes_practice_settings_are_billing_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "billing.yaml").read_text()))
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    known = {f"RTOPS_{name.upper()}" for name in BillingSettings.model_fields}
    assert set(config["data"]) <= known
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    assert BillingSettings().billing_place_of_service == "freestanding"
