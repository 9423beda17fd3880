"""``make audit``: pip-audit over the locked requirements, and a verdict CI can act on.

pip-audit alone says "No known vulnerabilities found" when the advisory service did not answer
for a package (it marks the package skipped in its JSON), so an outage looks like a clean bill.
This script reads pip-audit's JSON and decides:

- exit 1: a locked package has a known vulnerability with a fixed version (update the lock);
- exit 0 with a warning: vulnerabilities with no fixed version yet (listed, nothing to update
  to), and an advisory service that could not be reached or did not answer for some packages
  (listed as not audited); ``AUDIT_STRICT=1`` turns an unanswered audit into exit 2, for a
  release build that must not ship unaudited.

The lock is exported with every dependency group (the test and lint tools run in CI too).
``AUDIT_SERVICE`` picks pip-audit's advisory service: ``pypi`` (default) or ``osv``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "ci"
BIN = Path(sys.executable).parent


@dataclass
class Verdict:
    """What pip-audit's JSON report says, sorted by what to do about it."""

    fixable: list[str] = field(default_factory=list)
    unfixed: list[str] = field(default_factory=list)
    not_audited: list[str] = field(default_factory=list)
    audited: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.fixable else 0


def judge(report: dict[str, object]) -> Verdict:
    """Sort pip-audit's ``--format json`` report: each vulnerability with or without a fix,
    and each package the service gave no answer for."""
    verdict = Verdict()
    for dep in report.get("dependencies", []):  # type: ignore[union-attr]
        if "skip_reason" in dep:  # its reason names the version
            verdict.not_audited.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        name = f"{dep['name']} {dep['version']}"
        verdict.audited += 1
        for vuln in dep.get("vulns", []):
            ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
            if vuln.get("fix_versions"):
                fixes = ", ".join(vuln["fix_versions"])
                verdict.fixable.append(f"{name}: {ids}; fixed in {fixes}")
            else:
                verdict.unfixed.append(f"{name}: {ids}; no fixed version yet")
    return verdict


def export_lock(path: Path) -> None:
    subprocess.run(
        [
            str(BIN / "uv"),
            "export",
            "--frozen",
            "--no-hashes",
            "--all-groups",
            "--no-emit-project",
            "--quiet",
            "-o",
            str(path),
        ],
        cwd=ROOT,
        check=True,
    )


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    requirements = OUT / "requirements.lock.txt"
    report_path = OUT / "audit.json"
    report_path.unlink(missing_ok=True)
    export_lock(requirements)
    service = os.environ.get("AUDIT_SERVICE", "pypi")
    strict = os.environ.get("AUDIT_STRICT") == "1"
    # --no-deps: the export pins every package already; --disable-pip: nothing is installed.
    run = subprocess.run(
        [
            str(BIN / "pip-audit"),
            "-r",
            str(requirements),
            "--no-deps",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "-s",
            service,
            "--format",
            "json",
            "-o",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if not report_path.exists():
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: the advisory service ({service}) could not be reached: {last}")
        print("audit: NOT AUDITED; nothing was concluded about the locked packages")
        return 2 if strict else 0
    verdict = judge(json.loads(report_path.read_text()))
    for line in verdict.fixable:
        print(f"audit: VULNERABLE (update the lock): {line}")
    for line in verdict.unfixed:
        print(f"audit: vulnerable, no fix yet (review): {line}")
    if verdict.not_audited:
        print(
            f"audit: NOT AUDITED: {len(verdict.not_audited)} packages got no answer from the "
            f"advisory service ({service}); first: {verdict.not_audited[0]}"
        )
    print(
        f"audit: {verdict.audited} packages audited, {len(verdict.fixable)} vulnerabilities "
        f"with a fix, {len(verdict.unfixed)} without, {len(verdict.not_audited)} not audited; "
        f"report in {report_path.relative_to(ROOT)}"
    )
    if verdict.exit_code:
        return verdict.exit_code
    return 2 if strict and verdict.not_audited else 0


if __name__ == "__main__":
    raise SystemExit(main())
