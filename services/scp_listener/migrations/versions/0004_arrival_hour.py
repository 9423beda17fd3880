"""objects received per device, SOP class and UTC hour (the staff pages' counts), filled from
the objects already stored

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

# The hour an object arrived in, as each backend stores a UTC timestamp: SQLite keeps the
# text SQLAlchemy writes ("2026-11-29 18:34:22.563741"), PostgreSQL a timestamptz.
HOUR = {
    "sqlite": "strftime('%Y-%m-%d %H:00:00.000000', received_at)",
    "postgresql": "date_trunc('hour', received_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
}


def upgrade() -> None:
    op.create_table(
        "arrival_hour",
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("objects", sa.Integer(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "calling_ae", "sop_class_uid", "hour", name=op.f("pk_arrival_hour")
        ),
    )
    op.create_index(op.f("ix_arrival_hour_hour"), "arrival_hour", ["hour"], unique=False)
    hour = HOUR[op.get_bind().dialect.name]
    op.execute(
        f"INSERT INTO arrival_hour (calling_ae, sop_class_uid, hour, objects, last_received_at) "
        f"SELECT calling_ae, sop_class_uid, {hour}, count(*), max(received_at) "
        f"FROM dicom_object GROUP BY calling_ae, sop_class_uid, {hour}"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_arrival_hour_hour"), table_name="arrival_hour")
    op.drop_table("arrival_hour")
