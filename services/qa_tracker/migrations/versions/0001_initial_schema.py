"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("roles", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("resource", sa.String(length=500), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "fraction",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=200), nullable=True),
        sa.Column("plan_uid", sa.String(length=64), nullable=True),
        sa.Column("fraction_number", sa.Integer(), nullable=True),
        sa.Column("machine", sa.String(length=64), nullable=True),
        sa.Column("treated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False),
        sa.Column("therapist_override", sa.Boolean(), nullable=False),
        sa.Column("next_fraction_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("imaged", sa.Boolean(), nullable=False),
        sa.Column("physician", sa.String(length=200), nullable=True),
        sa.Column("technique", sa.String(length=32), nullable=True),
        sa.Column("site", sa.String(length=200), nullable=True),
        sa.Column("translation_mm", sa.JSON(), nullable=True),
        sa.Column("rotation_deg", sa.JSON(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_status", sa.String(length=20), nullable=False),
        sa.Column("override_required", sa.Boolean(), nullable=False),
        sa.Column("override_documented", sa.Boolean(), nullable=False),
        sa.Column("rejected", sa.Boolean(), nullable=False),
        sa.Column("overdue_notified", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fraction")),
        sa.UniqueConstraint("key", name=op.f("uq_fraction_key")),
    )
    with op.batch_alter_table("fraction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fraction_due_at"), ["due_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_fraction_machine"), ["machine"], unique=False)
        batch_op.create_index(batch_op.f("ix_fraction_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_fraction_physician"), ["physician"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_fraction_review_status"), ["review_status"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_fraction_treated_at"), ["treated_at"], unique=False)

    op.create_table(
        "imaging_session",
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("machine", sa.String(length=64), nullable=True),
        sa.Column("classification", sa.String(length=16), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("approvals", sa.JSON(), nullable=False),
        sa.Column("fraction_key", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("series_uid", name=op.f("pk_imaging_session")),
    )
    with op.batch_alter_table("imaging_session", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_imaging_session_fraction_key"), ["fraction_key"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_imaging_session_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_sent_at"), ["sent_at"], unique=False)

    op.create_table(
        "plan",
        sa.Column("plan_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("site", sa.String(length=200), nullable=True),
        sa.Column("technique", sa.String(length=32), nullable=True),
        sa.Column("physician", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("plan_uid", name=op.f("pk_plan")),
    )
    with op.batch_alter_table("plan", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "processed_event",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_processed_event")),
    )
    op.create_table(
        "registration",
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("machine", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("content_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("creator", sa.String(length=200), nullable=True),
        sa.Column("moving_series", sa.JSON(), nullable=False),
        sa.Column("translation_mm", sa.JSON(), nullable=True),
        sa.Column("rotation_deg", sa.JSON(), nullable=True),
        sa.Column("session_uid", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("sop_uid", name=op.f("pk_registration")),
    )
    with op.batch_alter_table("registration", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_registration_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_registration_session_uid"), ["session_uid"], unique=False
        )

    op.create_table(
        "treatment_record",
        sa.Column("record_uid", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=200), nullable=True),
        sa.Column("plan_uid", sa.String(length=64), nullable=True),
        sa.Column("fraction_group", sa.Integer(), nullable=True),
        sa.Column("fraction_numbers", sa.JSON(), nullable=False),
        sa.Column("machine", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False),
        sa.Column("therapist_override", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("record_uid", name=op.f("pk_treatment_record")),
    )
    with op.batch_alter_table("treatment_record", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_treatment_record_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fraction_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("override_reason", sa.Text(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("physician", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("source_ref", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["fraction_id"], ["fraction.id"], name=op.f("fk_review_fraction_id_fraction")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review")),
        sa.UniqueConstraint("source", "source_ref", name=op.f("uq_review_source_source_ref")),
    )
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_fraction_id"), ["fraction_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_fraction_id"))

    op.drop_table("review")
    with op.batch_alter_table("treatment_record", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_treatment_record_patient_id"))

    op.drop_table("treatment_record")
    with op.batch_alter_table("registration", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registration_session_uid"))
        batch_op.drop_index(batch_op.f("ix_registration_patient_id"))

    op.drop_table("registration")
    op.drop_table("processed_event")
    with op.batch_alter_table("plan", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_patient_id"))

    op.drop_table("plan")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_sent_at"))

    op.drop_table("outbox")
    with op.batch_alter_table("imaging_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_session_patient_id"))
        batch_op.drop_index(batch_op.f("ix_imaging_session_fraction_key"))

    op.drop_table("imaging_session")
    with op.batch_alter_table("fraction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fraction_treated_at"))
        batch_op.drop_index(batch_op.f("ix_fraction_review_status"))
        batch_op.drop_index(batch_op.f("ix_fraction_physician"))
        batch_op.drop_index(batch_op.f("ix_fraction_patient_id"))
        batch_op.drop_index(batch_op.f("ix_fraction_machine"))
        batch_op.drop_index(batch_op.f("ix_fraction_due_at"))

    op.drop_table("fraction")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_patient_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))

    op.drop_table("audit_log")
