"""The documents service's rules, without I/O: snapshots and what changed, version history
(adaptation, concurrent plans, QA plans, inferred predecessors), the checklist, weekly
documents, flags and the letter's facts."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.documents import domain
from services.documents.domain import ChecklistPolicy, ChecklistRule, PlanSnapshot
from shared.courses import PlanFacts, PlanLink, group_courses
from shared.events import PlanReceived
from tests.documents.events import plan, static, uid, vmat

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def snap(n: int, **kw: object) -> PlanSnapshot:
    event = plan(n, **kw)  # type: ignore[arg-type]
    assert isinstance(event.data, PlanReceived)
    return domain.snapshot_of(event.data, event.time)


def versions_of(*snaps: PlanSnapshot) -> dict[str, domain.Version]:
    facts = [
        PlanFacts(
            uid=s.uid,
            patient_id=s.patient_id,
            intent=s.intent,
            label=s.label,
            frame_of_reference_uid=s.frame_of_reference_uid,
            plan_date=s.plan_date,
            references=s.references,
            revision=s.revision,
        )
        for s in snaps
    ]
    return domain.version_history(group_courses(facts), {s.uid: s for s in snaps})


def test_snapshot_keeps_the_facts_a_version_compares() -> None:
    s = snap(1)
    assert (s.fractions, s.prescription_gy, s.technique) == (28, 70.0, "VMAT")
    assert s.beams == ("ARC1", "ARC2") and s.machines == ("TrueBeam1",)
    assert s.dose_per_fraction_gy == 2.5
    assert s.approved


@pytest.mark.parametrize(
    ("beams", "technique"),
    [((vmat(1),), "VMAT"), ((static(1), static(2)), "3D"), ((), None)],
)
def test_technique(beams: tuple, technique: str | None) -> None:
    assert snap(1, beams=beams).technique == technique


def test_an_unapproved_plan_is_not_approved_and_approval_needs_reviewer_and_time() -> None:
    assert not snap(1, approved=False).approved


def test_changes_between_versions_name_each_fact() -> None:
    before = snap(1)
    after = snap(2, fractions=25, dose_gy=62.5, beams=(vmat(1), vmat(3, machine="TrueBeam2")))
    changes = domain.changes_between(before, after)
    assert "fractions: 28 -> 25" in changes
    assert "prescription (Gy): 70 -> 62.5" in changes
    assert "machine: TrueBeam1 -> TrueBeam1, TrueBeam2" in changes
    assert "beams: 2 -> 2; added ARC3; removed ARC2" in changes
    assert domain.changes_between(None, after) == ()
    assert domain.changes_between(before, snap(1)) == ()


def test_predecessor_chain_is_the_version_order() -> None:
    v = versions_of(
        snap(1), snap(2, refs=((1, "PREDECESSOR"),)), snap(3, refs=((2, "PREDECESSOR"),))
    )
    assert [v[uid(i)].number for i in (1, 2, 3)] == [1, 2, 3]
    assert v[uid(3)].predecessor_uid == uid(2) and not v[uid(3)].predecessor_inferred
    assert v[uid(1)].superseded_by == uid(2) and v[uid(3)].superseded_by is None
    assert len({x.course_id for x in v.values()}) == 1


def test_an_adaptation_mid_course_named_otherwise_follows_its_predecessor() -> None:
    # A re-plan labelled otherwise still follows the plan it names as PREDECESSOR.
    v = versions_of(snap(1), snap(2, label="ADAPT boost", refs=((1, "PREDECESSOR"),)))
    assert v[uid(2)].number == 2 and v[uid(2)].predecessor_uid == uid(1)


def test_concurrent_plans_are_one_version() -> None:
    v = versions_of(snap(1), snap(2, label="PROST nodes", refs=((1, "CONCURRENT"),)))
    assert v[uid(1)].number == v[uid(2)].number == 1
    assert v[uid(1)].concurrent_uids == (uid(2),)
    assert v[uid(1)].superseded_by is None


def test_verification_plans_are_never_versions() -> None:
    qa = snap(9, intent="VERIFICATION", refs=((1, "VERIFIED_PLAN"),))
    v = versions_of(snap(1), qa)
    assert uid(9) not in v and v[uid(1)].number == 1


def test_without_references_the_label_stem_and_dates_infer_the_predecessor() -> None:
    v = versions_of(snap(1), snap(2, label="PROST v2", plan_date=date(2026, 3, 10)))
    assert v[uid(2)].number == 2
    assert v[uid(2)].predecessor_uid == uid(1) and v[uid(2)].predecessor_inferred


def test_version_order_does_not_depend_on_input_order() -> None:
    plans = [snap(1), snap(2, refs=((1, "PREDECESSOR"),)), snap(3, refs=((1, "CONCURRENT"),))]
    assert versions_of(*plans) == versions_of(*reversed(plans))


def test_default_checklist_adds_patient_qa_for_imrt_and_vmat_only() -> None:
    policy = ChecklistPolicy()
    assert "patient_qa_measurement" in policy.required("Prostate", "VMAT")
    assert "patient_qa_measurement" in policy.required("Prostate", "IMRT")
    assert "patient_qa_measurement" not in policy.required("Prostate", "3D")


def test_checklist_rules_per_site_and_technique() -> None:
    policy = ChecklistPolicy(
        rules=[ChecklistRule(site="breast", technique="3D", waive=["physics_plan_qa"])]
    )
    assert "physics_plan_qa" not in policy.required("Left Breast", "3D")
    assert "physics_plan_qa" in policy.required("Left Breast", "VMAT")
    with pytest.raises(ValueError, match="unknown checklist items"):
        ChecklistPolicy(base=["coffee"])


def test_dicom_approval_is_evidence_for_the_approval_item_only() -> None:
    required = ChecklistPolicy().required("Prostate", "3D")
    state = domain.checklist(required, {}, approved_in_dicom=True)
    assert "plan_approval" not in state.missing
    assert "written_directive" in state.missing  # never taken from APPROVED
    full = {t: f"doc-{t}" for t in required if t != "plan_approval"}
    assert domain.checklist(required, full, approved_in_dicom=True).complete
    assert not domain.checklist(required, full, approved_in_dicom=False).complete


@pytest.mark.parametrize(
    ("title", "doc_type"),
    [
        ("Eclipse Plan Report", "dosimetry_plan_report"),
        ("Physics plan check", "physics_plan_qa"),
        ("Patient-specific QA ArcCHECK", "patient_qa_measurement"),
        ("Written Directive", "written_directive"),
        ("Consent", "other"),
        (None, "other"),
    ],
)
def test_document_type_from_an_encapsulated_pdf_title(title: str | None, doc_type: str) -> None:
    assert domain.doc_type_of_title(title) == doc_type


def test_weekly_status_per_iso_week() -> None:
    days = [date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 9)]
    weeks = domain.weekly_status(days, [("2026-W10", "management_note")])
    assert [(w.week, w.fractions, w.missing) for w in weeks] == [
        ("2026-W10", 2, ("physics_check",)),
        ("2026-W11", 1, ("management_note", "physics_check")),
    ]


def test_flag_reasons() -> None:
    assert domain.flag_reasons(approved=True, superseded=False, missing_documents=()) == ()
    assert domain.flag_reasons(
        approved=False, superseded=True, missing_documents=("written_directive",)
    ) == ("unapproved", "superseded", "documents_incomplete")


@pytest.mark.parametrize(
    ("pn", "text"),
    [
        ("Referrer^Rita^^Dr.", "Dr. Rita Referrer"),
        ("Oncologist^Olga", "Olga Oncologist"),
        ("Smith^Ann^B^^MD", "Ann B Smith, MD"),
        ("", None),
        (None, None),
    ],
)
def test_person_name(pn: str | None, text: str | None) -> None:
    assert domain.person_name(pn) == text


def test_letter_facts_add_concurrent_doses_and_prefer_the_referral() -> None:
    first, nodes = snap(1), snap(2, dose_gy=14.0, referring=None)
    facts = domain.letter_facts(
        course_id="course:x",
        patient_name="Doe^John",
        birth_date=None,
        plans=[first, nodes],
        start_date=date(2026, 3, 2),
        department_contact="555-0100",
    )
    assert (facts.prescription_gy, facts.fractions, facts.dose_per_fraction_gy) == (84.0, 28, 3.0)
    assert facts.referring_provider == "Dr. Rita Referrer"
    assert facts.treating_physician == "Olga Oncologist" and facts.intent == "Curative"
    referred = domain.letter_facts(
        course_id="course:x",
        patient_name=None,
        birth_date=None,
        plans=[first],
        start_date=date(2026, 3, 2),
        department_contact="x",
        referral="Gp^Gary",
    )
    assert referred.referring_provider == "Gary Gp"


def test_plan_links_are_kept() -> None:
    s = snap(2, refs=((1, "PREDECESSOR"),))
    assert s.references == (PlanLink(uid=uid(1), relationship="PREDECESSOR"),)
