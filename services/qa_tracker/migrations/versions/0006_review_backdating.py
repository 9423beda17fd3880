"""a review's backdating reason, the system it was documented in, and who recorded it (issue
15); recorded_at has been there since 0001, set by the server when the review was recorded

Existing rows keep their recorded_at (the time rtops recorded them, never copied from
reviewed_at), get no reason and no recorder: an earlier backdated review shows as
backdated without a reason once its fraction is assessed again (``rtops rebuild``).

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
    with op.batch_alter_table("review") as batch:
        batch.add_column(sa.Column("backdate_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("documented_in", sa.String(200), nullable=True))
        batch.add_column(sa.Column("recorded_by", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review") as batch:
        batch.drop_column("recorded_by")
        batch.drop_column("documented_in")
        batch.drop_column("backdate_reason")
