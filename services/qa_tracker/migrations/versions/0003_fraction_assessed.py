"""fraction.assessed: fraction_revision (survives fraction deletion), fraction.imaging

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
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
        "fraction_revision",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_fraction_revision")),
    )
    with op.batch_alter_table("fraction", schema=None) as batch_op:
        batch_op.add_column(sa.Column("imaging", sa.JSON(), nullable=True))
    # The classifications of the imaging already matched to each fraction; the first
    # fraction.assessed of each fraction (revision 1) is sent when its verdict next changes,
    # or by ``python -m services.qa_tracker reassess``.
    imaging = sa.table(
        "imaging_session", sa.column("fraction_key", sa.String), sa.column("classification")
    )
    fraction = sa.table("fraction", sa.column("key", sa.String), sa.column("imaging", sa.JSON))
    found: dict[str, set[str]] = {}
    bind = op.get_bind()
    for key, classification in bind.execute(
        sa.select(imaging.c.fraction_key, imaging.c.classification).where(
            imaging.c.fraction_key.is_not(None)
        )
    ):
        found.setdefault(key, set()).add(classification)
    for key, classes in found.items():
        bind.execute(
            sa.update(fraction).where(fraction.c.key == key).values(imaging=sorted(classes))
        )


def downgrade() -> None:
    with op.batch_alter_table("fraction", schema=None) as batch_op:
        batch_op.drop_column("imaging")
    op.drop_table("fraction_revision")
