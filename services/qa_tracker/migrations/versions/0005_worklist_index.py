"""the review worklist's order as indexes, everyone's and a physician's (a page read and counted
without sorting every open fraction)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_fraction_worklist",
        "fraction",
        ["review_status", "imaged", "due_at", "treated_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_fraction_worklist_physician",
        "fraction",
        ["physician", "review_status", "imaged", "due_at", "treated_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_fraction_worklist_physician", table_name="fraction")
    op.drop_index("ix_fraction_worklist", table_name="fraction")
