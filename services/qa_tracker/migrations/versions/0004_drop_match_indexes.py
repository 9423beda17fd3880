"""drop the indexes of the match columns (imaging_session.fraction_key, registration.session_uid)

Every rebuild sets these columns, so each match updated an index at a random place (the keys
are patient and DICOM UIDs), and on PostgreSQL it made every such update a non-HOT one, which
adds an entry to every index of the table. Only the fraction detail read looked them up, and
a match never crosses patients, so that read goes through the (patient_id, time) indexes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "imaging_session": ("ix_imaging_session_fraction_key", "fraction_key"),
    "registration": ("ix_registration_session_uid", "session_uid"),
}


def upgrade() -> None:
    for table, (name, _column) in INDEXES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)


def downgrade() -> None:
    for table, (name, column) in INDEXES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, [column], unique=False)
