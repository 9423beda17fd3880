"""Issue 15: every string a client sends to any service carries a maximum length, and every list
a maximum count, read from each service's OpenAPI (built from its route table, so a new
endpoint or field cannot skip it). The bound is the DICOM VR's where the value is DICOM (PS3.5
section 6.2, Table 6.2-1: UI 64, LO 64, PN 64 per component group, CS 16, SH 16), else the
column's size, else a bound for free text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.service_apps import SERVICES, service_app

# Strings of a fixed grammar that pydantic parses whole or refuses (no open-ended text), and
# uploaded files ("binary"), whose bound is in bytes and checked as they are read: a 413
# (documents: RTOPS_DOCUMENTS_MAX_UPLOAD_MB; billing's claim files: 64 MiB).
FIXED_FORMATS = {"date", "date-time", "time", "uuid", "duration", "binary"}

# A request value that must stay unbounded would be listed here, with its reason; the test
# says when a listed one has got its bound, so that the entry goes.
KNOWN_EXCEPTIONS: set[str] = set()


def offenders_in(schema: dict[str, Any], where: str, components: dict[str, Any]) -> Iterator[str]:
    """Every string without maxLength and list without maxItems in ``schema`` (refs followed)."""
    seen: set[str] = set()

    def walk(node: dict[str, Any], at: str) -> Iterator[str]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in seen:
                return
            seen.add(name)
            yield from walk(components[name], f"{name}")
            return
        for key in ("anyOf", "oneOf", "allOf"):
            for option in node.get(key, []):
                yield from walk(option, at)
        kind = node.get("type")
        if kind == "string":
            bounded = (
                "maxLength" in node
                or "enum" in node
                or "const" in node
                or node.get("format") in FIXED_FORMATS
                or "contentMediaType" in node  # an uploaded file (OpenAPI 3.1)
            )
            if not bounded:
                yield f"{at}: string without maxLength"
        elif kind == "array":
            if "maxItems" not in node:
                yield f"{at}: array without maxItems"
            yield from walk(node.get("items", {}), f"{at}[]")
        elif kind == "object" or "properties" in node:
            for prop, spec in node.get("properties", {}).items():
                yield from walk(spec, f"{at}.{prop}")
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                yield from walk(extra, f"{at}.*")

    yield from walk(schema, where)


def request_offenders(openapi: dict[str, Any]) -> list[str]:
    components = openapi.get("components", {}).get("schemas", {})
    found: list[str] = []
    for path, operations in openapi["paths"].items():
        for method, op in operations.items():
            route = f"{method.upper()} {path}"
            for param in op.get("parameters", []):
                where = f"{route} {param['in']} {param['name']}"
                found += offenders_in(param.get("schema", {}), where, components)
            for media in op.get("requestBody", {}).get("content", {}).values():
                found += (
                    f"{route} body {o}"
                    for o in offenders_in(media.get("schema", {}), "", components)
                )
    return sorted(set(found))


@pytest.mark.parametrize("service", SERVICES)
def test_every_string_and_list_a_client_sends_is_bounded(
    base_settings: dict[str, object], service: str
) -> None:
    with service_app(service, base_settings) as (app, _settings):
        found = request_offenders(app.openapi())
    unexpected = [o for o in found if f"{service}: {o}" not in KNOWN_EXCEPTIONS]
    assert not unexpected, "bound these (maxLength / max_length, maxItems):\n" + "\n".join(
        unexpected
    )
    fixed = {e for e in KNOWN_EXCEPTIONS if e.startswith(f"{service}: ")} - {
        f"{service}: {o}" for o in found
    }
    assert not fixed, f"bounded now, drop from KNOWN_EXCEPTIONS: {sorted(fixed)}"
