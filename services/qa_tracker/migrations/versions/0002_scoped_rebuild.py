"""scoped rebuild: registration_series, (patient, time) indexes, plan revision

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME_COLUMNS = {
    "treatment_record": "started_at",
    "imaging_session": "acquired_at",
    "registration": "content_at",
}


def upgrade() -> None:
    series = op.create_table(
        "registration_series",
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("series_uid", "sop_uid", name=op.f("pk_registration_series")),
    )
    registration = sa.table(
        "registration", sa.column("sop_uid", sa.String), sa.column("moving_series", sa.JSON)
    )
    rows = [
        {"series_uid": uid, "sop_uid": sop_uid}
        for sop_uid, moving in op.get_bind().execute(
            sa.select(registration.c.sop_uid, registration.c.moving_series)
        )
        for uid in dict.fromkeys(moving or [])
    ]
    if rows:
        op.bulk_insert(series, rows)
    with op.batch_alter_table("plan", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), server_default="1", nullable=False))
    for table, column in TIME_COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_patient_id"))
            batch_op.create_index(f"ix_{table}_patient_time", ["patient_id", column], unique=False)


def downgrade() -> None:
    for table in TIME_COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_patient_time")
            batch_op.create_index(
                batch_op.f(f"ix_{table}_patient_id"), ["patient_id"], unique=False
            )
    with op.batch_alter_table("plan", schema=None) as batch_op:
        batch_op.drop_column("revision")
    op.drop_table("registration_series")
