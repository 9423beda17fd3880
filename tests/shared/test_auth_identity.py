"""Who a token names (issue 15): the subject, qualified by an external issuer, is the identity
that audit rows and ownership record; ``name``/``preferred_username`` are shown only; the
DICOM names come from the mapping keyed by the subject, never by a name the user may change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from shared.auth import (
    DEV_ISSUER,
    MAX_ISSUER_CHARS,
    Authenticator,
    Principal,
    dev_signing_key,
    stable_id,
)
from shared.errors import Unauthorized
from shared.settings import RtopsSettings, StaffIdentity

OLGA = "Oncologist^Olga"


@pytest.fixture
def settings(tmp_path: Path) -> RtopsSettings:
    return RtopsSettings(
        var_dir=tmp_path,
        dev_signing_key="k" * 48,
        ui_identities={
            OLGA: StaffIdentity(dicom_names=[OLGA]),  # keyed by a name: never matches a sub
            "olga": StaffIdentity(dicom_names=[OLGA], npi="1234567893"),
        },
    )


def dev_token(settings: RtopsSettings, **claims: Any) -> str:
    now = datetime.now(UTC)
    body = {
        "iss": DEV_ISSUER,
        "aud": settings.oidc_audience,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "roles": ["physician"],
        **claims,
    }
    return jwt.encode(body, dev_signing_key(settings), algorithm="HS256")


def test_the_issues_token_is_mallory(settings: RtopsSettings) -> None:
    token = dev_token(settings, sub="mallory", preferred_username=OLGA)
    who = Authenticator(settings).verify(token)
    assert who == Principal(
        user="mallory",
        roles=frozenset({"physician"}),
        subject="mallory",
        issuer=DEV_ISSUER,
        display_name=OLGA,
        names=(),
    )
    assert who.shown_as == OLGA


def test_the_subject_is_mapped_and_name_is_the_display(settings: RtopsSettings) -> None:
    token = dev_token(settings, sub="olga", name="Olga Oncologist", preferred_username="oo")
    who = Authenticator(settings).verify(token)
    assert (who.user, who.display_name, who.names) == ("olga", "Olga Oncologist", (OLGA,))


def test_without_a_display_claim_the_identity_is_shown(settings: RtopsSettings) -> None:
    who = Authenticator(settings).verify(dev_token(settings, sub="olga"))
    assert (who.display_name, who.shown_as) == ("", "olga")


def test_a_long_display_name_is_cut_a_long_subject_refused(settings: RtopsSettings) -> None:
    who = Authenticator(settings).verify(dev_token(settings, sub="olga", name="x" * 500))
    assert who.display_name == "x" * 200
    with pytest.raises(Unauthorized, match="subject"):
        Authenticator(settings).verify(dev_token(settings, sub="x" * 65))


def test_an_external_issuers_subjects_are_qualified() -> None:
    assert stable_id("olga", DEV_ISSUER) == "olga"
    idp = "https://idp.example.org/realms/rtops"
    assert stable_id("f3c1", idp) == stable_id("f3c1", idp + "/") == f"{idp}#f3c1"


def test_an_issuer_too_long_for_the_audit_column_is_refused(settings: RtopsSettings) -> None:
    issuer = "https://" + "i" * MAX_ISSUER_CHARS
    long = settings.model_copy(
        update={"oidc_issuer": issuer, "oidc_jwks_url": "http://127.0.0.1:9/jwks"}
    )
    with pytest.raises(ValueError, match="RTOPS_OIDC_ISSUER"):
        Authenticator(long)
    assert len(stable_id("s" * 64, "https://" + "i" * (MAX_ISSUER_CHARS - 8))) == 200
