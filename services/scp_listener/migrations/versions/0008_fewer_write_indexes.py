"""two indexes no query needs, written by every store: ``dicom_object.sop_instance_uid`` (the
unique constraint on (sop_instance_uid, revision) starts with it and serves every lookup by
UID) and ``image_series.last_received_at`` (the quiet sweep finds its few dirty rows by
``dirty``); each cost a B-tree page written per object (docs/scp_performance.md, "The eighth
session")

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_dicom_object_sop_instance_uid", table_name="dicom_object")
    op.drop_index("ix_image_series_last_received_at", table_name="image_series")


def downgrade() -> None:
    op.create_index("ix_image_series_last_received_at", "image_series", ["last_received_at"])
    op.create_index("ix_dicom_object_sop_instance_uid", "dicom_object", ["sop_instance_uid"])
