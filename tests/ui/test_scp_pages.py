"""The SCP's staff pages over httpx: arrivals (filters, paging), devices, problems, roles,
sign-in and audit. The app runs without DICOM or NATS (``background=False``); objects are
ingested straight through the ``Ingestor``, and failures go through the SCP's C-STORE and
association handlers with stand-in events, so they are recorded as the DICOM side records them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from services.scp_listener import pages, scp, sop
from services.scp_listener.store import AuditLog, DicomObject
from tests import dicom_factories as f
from tests.support import scp_rest_app, scp_settings

OTHER = f.PatientSpec(patient_id="RTOPS-TEST-002", name="Phantom^Head")


@pytest.fixture
def app(base_settings: dict[str, object], tmp_path: Path) -> Iterator[FastAPI]:
    """TRUEBEAM1 sent four treatment records of the default patient and a PDF of OTHER's;
    CTSIM1 and TPS1 never sent anything."""
    with scp_rest_app(scp_settings(base_settings)) as app:
        linac = app.state.device_registry.devices["TRUEBEAM1"].as_source()
        for i in range(1, 5):
            path = f.write(
                f.treatment_record(plan_uid="1.2.3", fraction_number=i), tmp_path / f"{i}.dcm"
            )
            ingest(app, path, sop.RT_BEAMS_RECORD, linac)
        pdf = f.write(f.encapsulated_pdf(patient=OTHER), tmp_path / "pdf.dcm")
        ingest(app, pdf, sop.ENCAPSULATED_PDF, linac)
        yield app


def ingest(app: FastAPI, path: Path, sop_class: str, source: Any) -> None:
    outcome = app.state.ingestor.ingest(
        path,
        sop_class_uid=sop_class,
        sop_instance_uid="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        source=source,
    )
    assert outcome.created, outcome


async def sign_in(client: httpx.AsyncClient, name: str = "Ivan IT", role: str = "admin") -> None:
    form = await client.get("/ui/sign-in")
    token = re.findall(r'name="csrf_token" value="([^"]+)"', form.text)[-1]
    answer = await client.post(
        "/ui/sign-in", data={"name": name, "role": role, "csrf_token": token, "next": "/ui/"}
    )
    assert answer.status_code == 303, answer.text


def audit_rows(app: FastAPI) -> list[tuple[str, str, str, str | None]]:
    with app.state.session_factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


def object_rows(html: str) -> list[str]:
    return re.findall(r'data-object="([^"]+)"', html)


async def test_not_signed_in_redirects_and_billing_is_refused(client: httpx.AsyncClient) -> None:
    for page in ("/ui/arrivals", "/ui/devices", "/ui/problems"):
        answer = await client.get(page)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/sign-in?next=%2Fui%2F")
    await sign_in(client, "Bill", "billing")
    for page in ("/ui/arrivals", "/ui/devices", "/ui/problems"):
        answer = await client.get(page)
        assert answer.status_code == 403
        assert "therapist, physicist, dosimetrist, admin" in answer.text
    home = await client.get("/ui/", follow_redirects=False)
    assert home.status_code in (303, 307) and "/ui/arrivals" in home.headers["location"]


async def test_arrivals_counts_filters_and_audit(app: FastAPI, client: httpx.AsyncClient) -> None:
    await sign_in(client, "Tess Therapist", "therapist")
    page = await client.get("/ui/arrivals")
    assert page.status_code == 200
    html = page.text
    assert len(object_rows(html)) == 5
    assert "5 objects match" in html
    assert "RT Beams Treatment Record" in html and "Encapsulated PDF" in html
    # Counted by device and kind: four records and one PDF from TRUEBEAM1.
    counts = re.findall(r"<td>([^<]+)</td>\s*<td class=\"num\">(\d+)</td>", html)
    assert ("RT Beams Treatment Record", "4") in counts and ("Encapsulated PDF", "1") in counts
    for link in ('href="/ui/arrivals"', 'href="/ui/devices"', 'href="/ui/problems"'):
        assert link in html

    by_patient = await client.get("/ui/arrivals", params={"patient": OTHER.patient_id})
    assert len(object_rows(by_patient.text)) == 1
    by_kind = await client.get("/ui/arrivals", params={"kind": sop.RT_BEAMS_RECORD})
    assert len(object_rows(by_kind.text)) == 4
    by_device = await client.get("/ui/arrivals", params={"device": "CTSIM1"})
    assert object_rows(by_device.text) == [] and "Nothing arrived" in by_device.text
    # Clinic dates: today is in range (both ends included), tomorrow on is not.
    today = datetime.now(ZoneInfo(app.state.settings.clinic_timezone)).date()
    same_day = {"from": today.isoformat(), "to": today.isoformat()}
    assert len(object_rows((await client.get("/ui/arrivals", params=same_day)).text)) == 5
    later = {"from": (today + timedelta(days=1)).isoformat()}
    assert object_rows((await client.get("/ui/arrivals", params=later)).text) == []
    bad = await client.get("/ui/arrivals", params={"from": "yesterday"})
    assert bad.status_code == 200 and "is not a date" in bad.text

    rows = audit_rows(app)
    assert ("read", "Tess Therapist", "/ui/arrivals", "RTOPS-TEST-001") in rows
    assert ("read", "Tess Therapist", "/ui/arrivals", OTHER.patient_id) in rows
    assert ("read", "Tess Therapist", f"/ui/arrivals?patient={OTHER.patient_id}", None) not in (
        rows
    )
    assert any(r[2] == f"/ui/arrivals?patient={OTHER.patient_id}" for r in rows)


async def test_arrivals_pages_newest_first(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    await sign_in(client)
    seen: list[str] = []
    url: str | None = "/ui/arrivals?device=TRUEBEAM1"
    while url:
        html = (await client.get(url)).text
        seen += object_rows(html)
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = "/ui/arrivals" + found.group(1).replace("&amp;", "&") if found else None
    assert len(seen) == len(set(seen)) == 5
    with app.state.session_factory() as session:
        newest_first = session.scalars(
            select(DicomObject.sop_instance_uid).order_by(DicomObject.id.desc())
        ).all()
    assert seen == list(newest_first)
    forged = await client.get("/ui/arrivals", params={"cursor": "e30="})
    assert forged.status_code == 200 and "cursor is not one" in forged.text


async def test_devices_show_last_sent_and_today(client: httpx.AsyncClient) -> None:
    await sign_in(client, "Phil Physicist", "physicist")
    html = (await client.get("/ui/devices")).text
    rows = dict(re.findall(r'<tr data-device="([^"]+)">(.*?)</tr>', html, re.S))
    assert set(rows) == {"TRUEBEAM1", "CTSIM1", "TPS1"}
    assert "linac" in rows["TRUEBEAM1"] and "TrueBeam1" in rows["TRUEBEAM1"]
    assert "never sent" not in rows["TRUEBEAM1"]
    assert re.search(r'<td class="num">5</td>', rows["TRUEBEAM1"])
    for silent in ("CTSIM1", "TPS1"):
        assert "never sent" in rows[silent] and '<td class="num">0</td>' in rows[silent]
    assert "ct_simulator" in rows["CTSIM1"] and "Main" in rows["CTSIM1"]


class _Assoc(SimpleNamespace):
    __hash__ = object.__hash__  # as an Association is: the C-STORE handler keys on it


def _event(calling: str, **extra: Any) -> Any:
    requestor = SimpleNamespace(ae_title=calling, address="10.0.0.9", port=40000, **extra)
    return SimpleNamespace(assoc=_Assoc(requestor=requestor))


async def test_problems_show_failed_stores_and_refusals(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    metrics = SimpleNamespace(
        rejections=SimpleNamespace(labels=lambda *_: SimpleNamespace(inc=lambda *_: None)),
        internal_errors=SimpleNamespace(inc=lambda: None),
        problems=app.state.problems,
    )
    registry = app.state.device_registry
    # A malformed file through the C-STORE handler and the Ingestor: 0xC210.
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM at all")
    store = _event("TRUEBEAM1")
    store.request = SimpleNamespace(
        AffectedSOPClassUID=sop.RT_BEAMS_RECORD, AffectedSOPInstanceUID="1.2.999"
    )
    store.dataset_path = str(junk)
    store.context = SimpleNamespace(transfer_syntax="1.2.840.10008.1.2.1")
    assert scp.handle_store(store, app.state.ingestor, registry, metrics) == 0xC210  # type: ignore[arg-type]
    # A mis-cased calling AE title, refused at association.
    rq = SimpleNamespace(
        calling_ae_title="truebeam1", called_ae_title=app.state.settings.scp_ae_title
    )
    refused = _event("truebeam1", primitive=rq)
    scp._log_rejection(refused, app.state.settings, registry, metrics)  # type: ignore[arg-type]

    await sign_in(client, "Dora Dosimetrist", "dosimetrist")
    html = (await client.get("/ui/problems")).text
    reasons = re.findall(r'<tr data-reason="([^"]+)">', html)
    assert reasons == ["unknown_calling_ae", "cannot_understand"]  # newest first
    assert "0xC210" in html and "Cannot understand" in html and "1.2.999" in html
    assert "did you mean TRUEBEAM1? AE titles are case-sensitive" in html
    assert "Events waiting for NATS" in html
    depth = re.search(r'class="outbox-depth[^"]*">(\d+)<', html)
    assert depth and int(depth.group(1)) == 5  # four records and a PDF; NATS is not linked
    only = (await client.get("/ui/problems", params={"device": "truebeam1"})).text
    assert re.findall(r'<tr data-reason="([^"]+)">', only) == ["unknown_calling_ae"]
    assert ("read", "Dora Dosimetrist", "/ui/problems", None) in audit_rows(app)
