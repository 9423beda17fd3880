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
        "dicom_object",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approval", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_object")),
        sa.UniqueConstraint(
            "sop_instance_uid", "revision", name=op.f("uq_dicom_object_sop_instance_uid_revision")
        ),
        sa.UniqueConstraint(
            "sop_instance_uid", "sha256", name=op.f("uq_dicom_object_sop_instance_uid_sha256")
        ),
    )
    with op.batch_alter_table("dicom_object", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dicom_object_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dicom_object_series_instance_uid"), ["series_instance_uid"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dicom_object_sop_class_uid"), ["sop_class_uid"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dicom_object_sop_instance_uid"), ["sop_instance_uid"], unique=False
        )

    op.create_table(
        "image_series",
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dirty", sa.Boolean(), nullable=False),
        sa.Column("published_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("series_instance_uid", name=op.f("pk_image_series")),
    )
    with op.batch_alter_table("image_series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_series_dirty"), ["dirty"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_image_series_last_received_at"), ["last_received_at"], unique=False
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


def downgrade() -> None:

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_sent_at"))

    op.drop_table("outbox")
    with op.batch_alter_table("image_series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_series_last_received_at"))
        batch_op.drop_index(batch_op.f("ix_image_series_dirty"))

    op.drop_table("image_series")
    with op.batch_alter_table("dicom_object", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dicom_object_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_dicom_object_sop_class_uid"))
        batch_op.drop_index(batch_op.f("ix_dicom_object_series_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_dicom_object_patient_id"))

    op.drop_table("dicom_object")
