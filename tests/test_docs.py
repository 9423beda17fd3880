"""Documentation that must not drift from the code."""

from __future__ import annotations

import yaml

from services.qa_tracker.settings import QaSettings
from services.scp_listener.settings import ScpSettings
from tests.support import REPO


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    fields = {**ScpSettings.model_fields, **QaSettings.model_fields}
    missing = [
        f"RTOPS_{name.upper()}" for name in fields if f"`RTOPS_{name.upper()}`" not in readme
    ]
    assert not missing, f"add these settings to the README's table: {missing}"
    assert "make run" in readme and "make test" in readme


def test_kubernetes_manifests_parse_and_use_real_settings() -> None:
    fields = {*ScpSettings.model_fields, *QaSettings.model_fields}
    known = {f"RTOPS_{name.upper()}" for name in fields} | {"TMPDIR", "FORWARDED_ALLOW_IPS"}
    kinds = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.append(doc["kind"])
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                unknown = {e["name"] for e in container.get("env", [])} - known
                assert not unknown, f"{path.name}: no such setting {unknown}"
    assert {"Deployment", "Service", "Job", "ConfigMap"} <= set(kinds)
