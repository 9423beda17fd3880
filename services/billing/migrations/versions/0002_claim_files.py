"""claim files

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "claim_file",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=300), nullable=True),
        sa.Column("format", sa.String(length=20), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("remittances", sa.Integer(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=200), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_file")),
        sa.UniqueConstraint("sha256", name=op.f("uq_claim_file_sha256")),
    )
    op.create_table(
        "claim_line",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("cpt", sa.String(length=10), nullable=False),
        sa.Column("modifiers", sa.JSON(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_id"], ["claim_file.id"], name=op.f("fk_claim_line_file_id_claim_file")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_line")),
    )
    with op.batch_alter_table("claim_line", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_claim_line_file_id"), ["file_id"], unique=False)
        batch_op.create_index(
            "ix_claim_line_patient_date", ["patient_id", "service_date"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_claim_line_service_date"), ["service_date"], unique=False
        )

    op.create_table(
        "remittance_line",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(length=100), nullable=False),
        sa.Column("claim_status", sa.String(length=10), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("service_date", sa.Date(), nullable=False),
        sa.Column("cpt", sa.String(length=10), nullable=False),
        sa.Column("modifiers", sa.JSON(), nullable=False),
        sa.Column("billed_units", sa.Integer(), nullable=False),
        sa.Column("paid_units", sa.Integer(), nullable=False),
        sa.Column("charged_amount", sa.String(length=30), nullable=False),
        sa.Column("paid_amount", sa.String(length=30), nullable=False),
        sa.Column("denied", sa.Boolean(), nullable=False),
        sa.Column("adjustments", sa.JSON(), nullable=False),
        sa.Column("remark_codes", sa.JSON(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_id"], ["claim_file.id"], name=op.f("fk_remittance_line_file_id_claim_file")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remittance_line")),
    )
    with op.batch_alter_table("remittance_line", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_remittance_line_file_id"), ["file_id"], unique=False)
        batch_op.create_index(
            "ix_remittance_line_patient_date", ["patient_id", "service_date"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("remittance_line", schema=None) as batch_op:
        batch_op.drop_index("ix_remittance_line_patient_date")
        batch_op.drop_index(batch_op.f("ix_remittance_line_file_id"))

    op.drop_table("remittance_line")
    with op.batch_alter_table("claim_line", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_claim_line_service_date"))
        batch_op.drop_index("ix_claim_line_patient_date")
        batch_op.drop_index(batch_op.f("ix_claim_line_file_id"))

    op.drop_table("claim_line")
    op.drop_table("claim_file")
