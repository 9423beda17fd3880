"""The course-kind screen (pure): which courses are *possibly* stereotactic from their plans'
facts, and which charges wait for staff to confirm the kind. Never from plan names."""

from __future__ import annotations

from datetime import date

import pytest

from services.billing.assemble import (
    KIND_UNCONFIRMED,
    hold_unconfirmed_kind,
    kind_dependent_families,
    screen_kind,
)
from services.billing.domain import CourseEvaluation, CourseStatus, load_bundled_rules
from services.billing.domain.charges import Charge
from shared.events import FractionGroup, PlannedBeam, PlanReceived, PlanReference
from tests.events import TPS, obj, patient


def beam(radiation: str = "PHOTON", dose: float | None = None) -> PlannedBeam:
    return PlannedBeam(
        number=1,
        radiation_type=radiation,
        delivery_type="TREATMENT",
        beam_type="DYNAMIC",
        energies=(6.0,),
        gantry_rotation="arc",
        mlc_modulated=True,
        beam_dose_gy=dose,
    )


def plan(
    fractions: int | None,
    dose: float | None,
    *,
    site: str | None = "Lung",
    uid: str = "1.2.3.1",
    label: str = "PLAN",
    beams: tuple[PlannedBeam, ...] = (beam(),),
    ion: bool = False,
    predecessor: str | None = None,
    groups: tuple[FractionGroup, ...] | None = None,
) -> PlanReceived:
    return PlanReceived(
        patient=patient("K-1"),
        source=TPS,
        object=obj(uid, sop_class="1.2.840.10008.5.1.4.1.1.481.5"),
        ion=ion,
        label=label,
        treatment_site=site,
        fraction_groups=groups
        if groups is not None
        else (
            FractionGroup(
                number=1,
                fractions_planned=fractions,
                dose_per_fraction_gy=dose,
                prescription_dose_gy=dose * fractions if dose and fractions else None,
            ),
        ),
        referenced_plans=(PlanReference(sop_instance_uid=predecessor, relationship="PREDECESSOR"),)
        if predecessor
        else (),
        beams=beams,
        radiation_types=("PHOTON",),
    )


SCREEN = [
    # (id, plans, expected suggestion or None)
    ("8 Gy x 1 bone: candidate (SBRT suggested)", [plan(1, 8.0, site="Femur")], "sbrt"),
    ("10 Gy x 5 lung: candidate", [plan(5, 10.0)], "sbrt"),
    ("6 Gy x 5 at the threshold: candidate", [plan(5, 6.0)], "sbrt"),
    ("4 Gy x 5 palliative: below the threshold", [plan(5, 4.0)], None),
    ("2 Gy x 30: more than five fractions (MAC LCD)", [plan(30, 2.0)], None),
    ("8 Gy x 6: more than five fractions", [plan(6, 8.0)], None),
    ("20 Gy x 1 brain: SRS suggested", [plan(1, 20.0, site="Brain mets")], "srs"),
    ("cranial single fraction, no dose stated: SRS", [plan(1, None, site="Intracranial")], "srs"),
    ("9 Gy x 3 brain: SBRT (SRS in >1 fraction, SROA)", [plan(3, 9.0, site="Brain")], "sbrt"),
    ("5 fractions, no dose stated: not a candidate", [plan(5, None)], None),
    ("no fraction count: not a candidate", [plan(None, 10.0)], None),
    ("electrons only: not a candidate", [plan(1, 8.0, beams=(beam("ELECTRON"),))], None),
    ("protons: not a candidate", [plan(5, 10.0, ion=True)], None),
    (
        "dose from the beams' Beam Dose when the group states none",
        [plan(3, None, beams=(beam(dose=4.0), beam(dose=4.0)))],
        "sbrt",
    ),
    (
        "a 25-fraction plan in the course keeps it conventional",
        [plan(25, 2.0, uid="1.2.3.1"), plan(3, 7.0, uid="1.2.3.2")],
        None,
    ),
    (
        "a re-plan replaces its predecessor",
        [plan(25, 2.0, uid="1.2.3.1"), plan(5, 10.0, uid="1.2.3.2", predecessor="1.2.3.1")],
        "sbrt",
    ),
    (
        "the label never decides: 'SBRT' on 2 Gy x 30",
        [plan(30, 2.0, label="SBRT LUNG")],
        None,
    ),
]


@pytest.mark.parametrize(
    ("plans", "suggested"), [c[1:] for c in SCREEN], ids=[c[0] for c in SCREEN]
)
def test_the_screen_flags_short_high_dose_photon_courses(
    plans: list[PlanReceived], suggested: str | None
) -> None:
    screen = screen_kind(plans, min_dose_per_fraction_gy=6.0)
    assert (screen.suggested if screen else None) == suggested


def test_the_threshold_is_a_setting() -> None:
    seven_by_five = [plan(5, 7.0)]
    assert screen_kind(seven_by_five, min_dose_per_fraction_gy=6.0) is not None
    assert screen_kind(seven_by_five, min_dose_per_fraction_gy=8.0) is None


def test_the_screen_says_why() -> None:
    screen = screen_kind([plan(1, 8.0, site="Femur")], min_dose_per_fraction_gy=6.0)
    assert screen is not None
    assert screen.as_json() == {
        "suggested": "sbrt",
        "fractions_planned": 1,
        "dose_per_fraction_gy": 8.0,
        "threshold_gy": 6.0,
        "cranial": False,
        "plan_uids": ["1.2.3.1"],
        "sites": ["Femur"],
    }


def test_kind_dependent_families_come_from_the_rules_file() -> None:
    # Delivery (77402-77412 / 77371-77373), guidance (77387, none with SRS/SBRT), management
    # (77427/77431 / 77432/77435): the families with a rule conditioned on course_kind.
    assert kind_dependent_families(load_bundled_rules()) == {
        "linac_delivery",
        "guidance",
        "management",
    }


def test_an_unconfirmed_candidate_holds_only_kind_dependent_charges() -> None:
    day = date(2026, 3, 2)

    def charge(cpt: str, rule: str, status: str = "ready", reason: str | None = None) -> Charge:
        return Charge(
            id=f"c|{cpt}",
            patient_id="K-1",
            course_id="c",
            cpt=cpt,
            modifiers=(),
            units=1,
            service_date=day,
            status=status,  # type: ignore[arg-type]
            hold_reason=reason,
            evidence=("e",),
            rule=rule,
            citation="x",
            period=(day, day),
        )

    evaluation = CourseEvaluation(
        course_id="c",
        patient_id="K-1",
        kind="conventional",
        status=CourseStatus(state="closed", sessions=1, closures=()),
        sessions=(),
        charges=(
            charge("77407", "delivery-2026-level-2"),
            charge("77387", "igrt-2026", "hold", "review_pending"),
            charge("77431", "management-short-course"),
            charge("77336", "physics-weekly"),
            charge("77301", "imrt-plan"),
        ),
    )
    held = hold_unconfirmed_kind(evaluation, load_bundled_rules())
    assert {c.cpt: (c.status, c.hold_reason) for c in held.charges} == {
        "77407": ("hold", KIND_UNCONFIRMED),
        "77387": ("hold", KIND_UNCONFIRMED),
        "77431": ("hold", KIND_UNCONFIRMED),
        "77336": ("ready", None),
        "77301": ("ready", None),
    }
