"""Who may do what on the event bus: one NATS user per service, allowed to publish only its own
events and to use only its own durable consumers, plus an ``rtops`` admin user that manages the
stream (docs/security_nats.md).

The events carry patient names and birth dates, and a forged ``rtops.dicom.treatment.recorded``
becomes a delivered fraction (and a charge): an unauthenticated bus lets any local process read
the first and send the second.

This module holds the grants (what each service publishes and consumes), turns them into
nats-server permissions, and keeps the embedded server's passwords under ``var/nats`` (made once,
mode 0600, reused on every start). In production the same permissions go into the operator's
NATS configuration and each service's password comes from a Secret (deploy/k8s).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_USER = "rtops"
USERS_FILE = "users.json"
CONFIG_FILE = "nats-server.conf"


@dataclass(frozen=True)
class Grant:
    """A service's share of the bus: the domain its events live under (``rtops.<domain>.>``;
    None for a service that publishes nothing) and its durable consumers with the event types
    each reads (as in the service's ``Subscription``)."""

    service: str
    publishes: str | None
    consumes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# tests/shared/test_nats_auth.py checks this table against every service's Subscription and
# against the event types in shared/events: a service that starts publishing or consuming
# something new fails that test before it fails with a permissions violation at run time.
GRANTS: tuple[Grant, ...] = (
    Grant("scp_listener", "dicom"),
    Grant("qa_tracker", "qa", {"qa_tracker": ("rtops.dicom.>",)}),
    Grant("scheduler", "scheduler", {"scheduler": ("rtops.dicom.imaging.acquired",)}),
    Grant(
        "documents",
        "documents",
        {
            "documents": (
                "rtops.dicom.plan.received",
                "rtops.dicom.treatment.recorded",
                "rtops.dicom.document.received",
                "rtops.scheduler.booking.changed",
            )
        },
    ),
    Grant(
        "billing",
        "billing",
        {
            "billing": (
                "rtops.dicom.plan.received",
                "rtops.dicom.treatment.recorded",
                "rtops.dicom.treatment.summarized",
                "rtops.qa.fraction.assessed",
                "rtops.scheduler.sim.completed",
                "rtops.documents.course.regrouped",
                "rtops.documents.note.signed",
            )
        },
    ),
)
GRANTS_BY_SERVICE: dict[str, Grant] = {g.service: g for g in GRANTS}


def inbox_prefix(user: str) -> str:
    """The reply subjects of a user's requests. Each user gets its own, so that no service may
    subscribe to another's replies (a pull consumer's messages arrive on its inbox)."""
    return f"_INBOX_{user}"


def legacy_durable(durable: str, subject: str) -> str:
    """The per-subject durable ``shared.jetstream.consume`` runs on a server older than 2.10,
    which takes one filter subject per consumer."""
    return f"{durable}_{hashlib.sha1(subject.encode()).hexdigest()[:8]}"


def _prefixed(subject_prefix: str, event_type: str) -> str:
    return subject_prefix + event_type.removeprefix("rtops")


def permissions(grant: Grant, *, stream: str, subject_prefix: str) -> dict[str, object]:
    """nats-server permissions of a service's user: the least its outbox relay and its pull
    consumers need with nats-py (checked on NATS 2.10+ by tests/shared/test_nats_auth.py)."""
    publish = [f"$JS.API.STREAM.INFO.{stream}"]  # NatsLink checks the stream exists
    if grant.publishes:
        publish.append(f"{subject_prefix}.{grant.publishes}.>")
    for durable, event_types in grant.consumes.items():
        subjects = [_prefixed(subject_prefix, t) for t in event_types]
        names = [durable] + (
            [legacy_durable(durable, s) for s in subjects] if len(subjects) > 1 else []
        )
        for name in names:
            publish += [
                f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
                f"$JS.API.CONSUMER.INFO.{stream}.{name}",  # the backlog gauge
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",  # fetch
                f"$JS.ACK.{stream}.{name}.>",  # ack, nak, term
                f"{subject_prefix}.deadletter.{name}",
            ]
    # Replies (publish acks, API answers, fetched messages) come to the user's own inbox only;
    # no event subject is subscribed to: consumers pull through the JetStream API.
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [f"{inbox_prefix(grant.service)}.>"]},
    }


def load_or_create_passwords(nats_dir: Path) -> dict[str, str]:
    """The embedded server's users and passwords (``var/nats/users.json``, mode 0600): made on
    the first start, then reused, so that a restart keeps every service's credentials."""
    path = nats_dir / USERS_FILE
    users = [ADMIN_USER, *GRANTS_BY_SERVICE]
    known: dict[str, str] = {}
    if path.exists():
        known = json.loads(path.read_text())
    if all(u in known for u in users):
        return known
    for user in users:
        known.setdefault(user, secrets.token_urlsafe(32))
    _write_private(path, json.dumps(known, indent=2, sort_keys=True) + "\n")
    return known


def server_config(passwords: Mapping[str, str], *, stream: str, subject_prefix: str) -> str:
    """The ``authorization`` block of nats-server's configuration (JSON is a valid nats-server
    configuration): the admin user unrestricted, each service with its permissions."""
    users: list[dict[str, object]] = [{"user": ADMIN_USER, "password": passwords[ADMIN_USER]}]
    for grant in GRANTS:
        users.append(
            {
                "user": grant.service,
                "password": passwords[grant.service],
                "permissions": permissions(grant, stream=stream, subject_prefix=subject_prefix),
            }
        )
    return json.dumps({"authorization": {"users": users}}, indent=2) + "\n"


def write_server_config(
    nats_dir: Path, *, stream: str, subject_prefix: str
) -> tuple[Path, dict[str, str]]:
    """Write ``var/nats/nats-server.conf`` (0600) from the kept passwords and the grants of this
    version (rewritten on every start, so a grant that changed applies); returns its path and
    the passwords."""
    nats_dir.mkdir(parents=True, exist_ok=True)
    passwords = load_or_create_passwords(nats_dir)
    path = nats_dir / CONFIG_FILE
    _write_private(path, server_config(passwords, stream=stream, subject_prefix=subject_prefix))
    return path, passwords


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, never briefly by others: the file
    is created 0600 and renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def production_config(*, stream: str = "RTOPS", subject_prefix: str = "rtops") -> str:
    """The same users and permissions for an operator's NATS (deploy/nats/rtops-users.conf):
    nats-server configuration syntax, each password an environment variable of the NATS
    server's (``$RTOPS_NATS_PASSWORD_<USER>``, from the Secret that also feeds the services)."""

    def password(user: str) -> str:
        return f"$RTOPS_NATS_PASSWORD_{user.upper()}"

    lines = [
        "# Generated from shared/natsauth.py by `python -m shared.natsauth`; do not edit (a test",
        "# compares them). Include it in the NATS server's configuration; see",
        "# docs/security_nats.md. Passwords come from the server's environment.",
        "authorization {",
        "  users = [",
        f'    {{user: "{ADMIN_USER}", password: {password(ADMIN_USER)}}}',
    ]
    for grant in GRANTS:
        perms = json.dumps(permissions(grant, stream=stream, subject_prefix=subject_prefix))
        lines.append(
            f'    {{user: "{grant.service}", password: {password(grant.service)}, '
            f"permissions: {perms}}}"
        )
    return "\n".join([*lines, "  ]", "}", ""])


if __name__ == "__main__":
    print(production_config(), end="")
