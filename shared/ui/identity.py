"""Who a signed-in user is in the department's DICOM: worklists are keyed by the person names
that plans and records carry ("Oncologist^Olga"), sign-in gives a subject.

The identity provider's claim wins (``RTOPS_OIDC_NAMES_CLAIM``, ``RTOPS_OIDC_NPI_CLAIM``);
otherwise ``RTOPS_UI_IDENTITIES`` maps the user's stable identity: the development sign-in
name, or the OIDC subject (``sub``, or ``<issuer>#<sub>``). Never the ``preferred_username``
or e-mail address, which a user may change at the provider to take someone else's names
(issue 15). No mapping gives no names: the pages then say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.auth import DEV_ISSUER, mapped_identity
from shared.settings import RtopsSettings, StaffIdentity


def staff_identity(
    settings: RtopsSettings,
    subject: str,
    issuer: str = DEV_ISSUER,
    claims: Mapping[str, Any] | None = None,
) -> StaffIdentity:
    """The DICOM names and NPI of ``subject`` at ``issuer`` (see ``shared.auth``)."""
    return mapped_identity(settings, subject, issuer, dict(claims or {}))
