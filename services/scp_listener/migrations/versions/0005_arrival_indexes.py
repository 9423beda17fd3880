"""the arrivals page's filters as indexes: a kind within dates, and dates alone (a year's index
is millions of objects: the page read a kind's every object to find one week's)

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
        "ix_dicom_object_class_received", "dicom_object", ["sop_class_uid", "received_at"]
    )
    op.create_index("ix_dicom_object_received_at", "dicom_object", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_dicom_object_received_at", table_name="dicom_object")
    op.drop_index("ix_dicom_object_class_received", table_name="dicom_object")
