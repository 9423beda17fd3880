"""Who a signed-in user is in the department's DICOM: worklists are keyed by the person names
that plans and records carry ("Oncologist^Olga"), sign-in gives a subject or a typed name.

The identity provider's claim wins (``RTOPS_OIDC_NAMES_CLAIM``, ``RTOPS_OIDC_NPI_CLAIM``);
otherwise ``RTOPS_UI_IDENTITIES`` maps the user's subject, preferred_username, email or
development sign-in name. No mapping gives no names: the pages then say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.settings import RtopsSettings, StaffIdentity


def staff_identity(
    settings: RtopsSettings, keys: Iterable[str | None], claims: Mapping[str, Any] | None = None
) -> StaffIdentity:
    mapped = next(
        (settings.ui_identities[k] for k in keys if k and k in settings.ui_identities),
        StaffIdentity(),
    )
    claims = claims or {}
    names = _names(claims.get(settings.oidc_names_claim)) or mapped.dicom_names
    npi = claims.get(settings.oidc_npi_claim) or mapped.npi
    return StaffIdentity(dicom_names=names, npi=str(npi) if npi else None)


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]
