"""Billing's pure domain: no I/O, no clock, no settings lookups.

The service layer builds the facts from events, calls :func:`evaluate_course` with the rules
(:func:`load_bundled_rules`), the practice's settings, the payer and today's date, stores the
charges by id, and calls :func:`reconcile` over imported claim lines.
"""

from services.billing.domain.charges import BundledCharge, Charge, Unresolved
from services.billing.domain.course_end import CourseStatus, closed_units, course_status
from services.billing.domain.engine import CourseEvaluation, apply_bundles, evaluate_course
from services.billing.domain.facts import (
    BeamTechnique,
    BrachyChannelFacts,
    CourseFacts,
    DocumentFacts,
    FractionReviewFacts,
    PlanTechnique,
    SimulationFacts,
    StaffClosure,
    SummaryFacts,
    TreatmentRecordFacts,
)
from services.billing.domain.policy import BillingSettings, Payer
from services.billing.domain.reconcile import ClaimLine, Discrepancy, reconcile
from services.billing.domain.ruleset import RulesError, RuleSet, load_bundled_rules, parse_rules
from services.billing.domain.sessions import Session, count_sessions

__all__ = [
    "BeamTechnique",
    "BillingSettings",
    "BrachyChannelFacts",
    "BundledCharge",
    "Charge",
    "ClaimLine",
    "CourseEvaluation",
    "CourseFacts",
    "CourseStatus",
    "Discrepancy",
    "DocumentFacts",
    "FractionReviewFacts",
    "Payer",
    "PlanTechnique",
    "RuleSet",
    "RulesError",
    "Session",
    "SimulationFacts",
    "StaffClosure",
    "SummaryFacts",
    "TreatmentRecordFacts",
    "Unresolved",
    "apply_bundles",
    "closed_units",
    "count_sessions",
    "course_status",
    "evaluate_course",
    "load_bundled_rules",
    "parse_rules",
    "reconcile",
]
