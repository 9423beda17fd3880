"""patient generation: the counter that validates the service's in-memory patient state

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No rows: a patient without one has never been held in memory, so it is read from the
    # tables at its next evaluation.
    op.create_table(
        "patient_generation",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_patient_generation")),
    )


def downgrade() -> None:
    op.drop_table("patient_generation")
