"""``make audit``'s verdict (.ci/audit.py) on pip-audit's JSON report: red only for an advisory
with a fixed version; an advisory service that gave no answer is never taken for a clean bill."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support import REPO


def audit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", REPO / ".ci" / "audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def vuln(id_: str, fixes: list[str]) -> dict[str, object]:
    return {"id": id_, "aliases": [f"CVE-{id_}"], "fix_versions": fixes, "description": "..."}


def test_a_vulnerability_with_a_fix_is_red_one_without_is_listed() -> None:
    judge = audit_module().judge
    report = {
        "dependencies": [
            {"name": "fine", "version": "1.0", "vulns": []},
            {"name": "fixable", "version": "2.0", "vulns": [vuln("PYSEC-1", ["2.1"])]},
            {"name": "stuck", "version": "3.0", "vulns": [vuln("GHSA-2", [])]},
        ],
        "fixes": [],
    }
    verdict = judge(report)
    assert verdict.exit_code == 1
    assert verdict.fixable == ["fixable 2.0: PYSEC-1, CVE-PYSEC-1; fixed in 2.1"]
    assert verdict.unfixed == ["stuck 3.0: GHSA-2, CVE-GHSA-2; no fixed version yet"]
    assert verdict.audited == 3


def test_an_unfixed_vulnerability_alone_is_not_red() -> None:
    report = {"dependencies": [{"name": "stuck", "version": "3.0", "vulns": [vuln("X", [])]}]}
    assert audit_module().judge(report).exit_code == 0


def test_packages_the_service_did_not_answer_for_are_not_audited() -> None:
    """What pip-audit reports when the advisory service cannot be reached: every package
    skipped, and "No known vulnerabilities found" on its console."""
    report = {
        "dependencies": [
            {
                "name": "anyio",
                "skip_reason": "Dependency not found on PyPI and could not be audited: "
                "anyio (4.16.0)",
            }
        ]
    }
    verdict = audit_module().judge(report)
    assert verdict.audited == 0 and len(verdict.not_audited) == 1
    assert verdict.not_audited[0].startswith("anyio: Dependency not found")
