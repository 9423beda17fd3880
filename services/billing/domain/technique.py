"""Complexity levels from planned-beam technique facts (never from plan names or labels).

Each function returns the attribute a rule's ``when`` compares; None where the facts do not
decide, so that no rule matches and the occurrence is reported instead of guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.billing.domain.facts import BeamTechnique, PlanTechnique, TreatmentRecordFacts

ORTHOVOLTAGE_LIMIT_MEV = 1.0  # CPT: megavoltage delivery codes are ">= 1 MeV"; 77401 below


def _beams(plans: Iterable[PlanTechnique]) -> list[BeamTechnique]:
    return [b for p in plans for b in p.beams if b.therapeutic]


def radiation_types(plans: Iterable[PlanTechnique]) -> frozenset[str]:
    return frozenset((b.radiation_type or "").upper() for b in _beams(plans) if b.radiation_type)


def superficial(plans: Sequence[PlanTechnique]) -> bool:
    """Every therapeutic beam a photon beam below 1 MeV (superficial / orthovoltage)."""
    beams = _beams(plans)
    energies = [e for b in beams for e in b.energies]
    return (
        bool(beams and energies)
        and all((b.radiation_type or "").upper() == "PHOTON" for b in beams)
        and max(energies) < ORTHOVOLTAGE_LIMIT_MEV
    )


def modulated(plans: Iterable[PlanTechnique]) -> bool:
    """IMRT/VMAT: MLC leaves moving between control points of a therapeutic beam."""
    return any(b.mlc_modulated for b in _beams(plans))


def level_2026(plans: Sequence[PlanTechnique]) -> int | None:
    """CPT 2026 linac delivery level (domain-billing.md s. 1.6.a, hcn.health summary):
    3 (77412) for any of active motion management, multiple isocenters, mixed photon and
    electron, total skin electron; 2 (77407) for 3D-CRT or IMRT/VMAT to one isocenter;
    1 (77402) for electrons or 2D photons without volumetric planning. IGRT alone never
    raises the level."""
    if not plans or not _beams(plans):
        return None
    types = radiation_types(plans)
    # Concurrent plans of one session: the largest isocenter count, not the sum, because
    # plans may share an isocenter and an unproven level-3 claim is an audit finding.
    isocenters = max(p.isocenter_count for p in plans)
    if (
        any(p.motion_management for p in plans)
        or isocenters > 1
        or {"PHOTON", "ELECTRON"} <= types
        or any(p.total_skin_electron for p in plans)
    ):
        return 3
    if types == {"ELECTRON"}:
        return 1
    if any(p.volumetric for p in plans) or modulated(plans):
        return 2
    return 1


def legacy_level(plans: Sequence[PlanTechnique]) -> int | None:
    """CPT 2015-2025 conventional delivery level, and the 77261-77263 planning level (the
    descriptors of domain-billing.md s. 1.2, which the legacy delivery levels share; the
    delivery wording is recalled, unconfirmed): complex for tangents/wedges/compensators,
    rotational beams, combined modalities, complex blocking or 3+ areas; intermediate for 3+
    converging ports, 2 areas or multiple blocks; simple otherwise."""
    beams = _beams(plans)
    if not beams:
        return None
    isocenters = max(p.isocenter_count for p in plans)
    if (
        any(b.wedge_count or b.compensator_count or b.arc or b.mlc_modulated for b in beams)
        or len(radiation_types(plans)) > 1
        or isocenters >= 3
    ):
        return 3
    if len(beams) >= 3 or isocenters == 2 or any(b.block_count > 1 for b in beams):
        return 2
    return 1


def energy_band(plans: Iterable[PlanTechnique]) -> str | None:
    """Legacy G6003-G6014 energy bands (domain-billing.md s. 1.6.b): <=5, 6-10, 11-19, >=20."""
    energies = [e for b in _beams(plans) for e in b.energies]
    if not energies:
        return None
    top = max(energies)
    if top <= 5:
        return "le5"
    if top <= 10:
        return "6_10"
    if top < 20:
        return "11_19"
    return "ge20"


def imrt_method(plans: Iterable[PlanTechnique]) -> str | None:
    beams = _beams(plans)
    if any(b.mlc_modulated for b in beams):
        return "mlc"
    if any(b.compensator_count for b in beams):
        return "compensator"
    return None


def imrt_class(plans: Sequence[PlanTechnique]) -> str | None:
    """Legacy 77385 (simple) / 77386 (complex). CPT 2015 (recalled, unconfirmed: the notes name
    the codes, not the criteria): simple for prostate, breast and compensator-based IMRT;
    complex for every other site. The treatment site is the coded/free-text Treatment Site,
    the only fact that decides it; unknown -> None (no code is guessed)."""
    if imrt_method(plans) == "compensator":
        return "simple"
    sites = {(p.treatment_site or "").strip().casefold() for p in plans}
    sites.discard("")
    if not sites:
        return None
    simple = all(any(word in s for word in ("prostat", "breast")) for s in sites)
    return "simple" if simple else "complex"


def proton_level(plans: Sequence[PlanTechnique]) -> str | None:
    """77520 / 77522 / 77523 / 77525 (domain-billing.md s. 1.8 names them; the criteria are
    CPT's descriptors, recalled, unconfirmed): complex with several isocenters (matched or
    patched fields); intermediate with 2+ ports; simple with one port, with or without
    compensation."""
    beams = _beams(plans)
    if not beams:
        return None
    if max(p.isocenter_count for p in plans) > 1:
        return "complex"
    if len(beams) >= 2:
        return "intermediate"
    if any(b.compensator_count for b in beams):
        return "simple_compensated"
    return "simple"


def brachy_attrs(records: Iterable[TreatmentRecordFacts]) -> dict[str, str | None]:
    """HDR remote afterloading by channel count (domain-billing.md s. 1.9): surface 77767 (one
    channel) / 77768 (2+); interstitial or intracavitary 77770 (1) / 77771 (2-12) / 77772
    (>12); the brachy isodose plan 77316 / 77317 / 77318 by the same channel bands (s. 1.4)."""
    records = list(records)
    channels = max((sum(1 for c in r.brachy_channels if c.delivered) for r in records), default=0)
    types = {t.upper() for r in records for t in r.brachy_setup_types}
    surface = bool(types) and all("SURFACE" in t or "MOULD" in t or "MOLD" in t for t in types)
    if channels == 0:
        band = None
    elif channels == 1:
        band = "1"
    elif channels <= 12:
        band = "2_12"
    else:
        band = "gt12"
    return {"channels": band, "application": "surface" if surface else "interstitial_cavitary"}
