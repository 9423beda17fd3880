"""course kind: staff confirmations, and the course's candidate and confirmed kind

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "course_kind",
        sa.Column("course_id", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("course_id", name=op.f("pk_course_kind")),
    )
    with op.batch_alter_table("course_kind", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_course_kind_patient_id"), ["patient_id"], unique=False)
    with op.batch_alter_table("course", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind_confirmed", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("kind_candidate", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("course", schema=None) as batch_op:
        batch_op.drop_column("kind_candidate")
        batch_op.drop_column("kind_confirmed")
    with op.batch_alter_table("course_kind", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_course_kind_patient_id"))
    op.drop_table("course_kind")
