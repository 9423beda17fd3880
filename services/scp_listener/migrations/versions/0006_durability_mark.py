"""the durability mark: the row each confirmation of the reconciliation rewrites with a flushed
commit, after the index commits stopped waiting for their own flush (docs/scp_durability.md)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "durability_mark",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_objects", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_durability_mark")),
    )


def downgrade() -> None:
    op.drop_table("durability_mark")
