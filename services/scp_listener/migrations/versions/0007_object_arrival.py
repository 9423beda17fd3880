"""object_arrival: one INSERT indexes a received object, counts it in its arrival hour and
marks its image series changed (a view whose INSTEAD OF trigger writes the three tables), so
that the ingest's write is one statement (docs/scp_performance.md, "The seventh session")

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OBJECT_COLUMNS = (
    "sop_instance_uid, revision, sop_class_uid, sha256, storage_key, size, "
    "transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, calling_ae, "
    "received_at, acquired_at, approval"
)
_NEW_OBJECT = ", ".join(f"NEW.{c.strip()}" for c in _OBJECT_COLUMNS.split(","))

# The view's two extra columns: the image series the object marks changed (NULL: not an
# image), and that series' facts, which only a new series row takes.
_SQLITE = [
    f"CREATE VIEW object_arrival AS SELECT {_OBJECT_COLUMNS}, "
    "NULL AS image_series_uid, NULL AS image_series_facts FROM dicom_object WHERE 0",
    f"""CREATE TRIGGER object_arrival_insert INSTEAD OF INSERT ON object_arrival
BEGIN
    INSERT INTO dicom_object ({_OBJECT_COLUMNS}) VALUES ({_NEW_OBJECT});
    INSERT INTO arrival_hour (calling_ae, sop_class_uid, hour, objects, last_received_at)
    VALUES (NEW.calling_ae, NEW.sop_class_uid,
            strftime('%Y-%m-%d %H:00:00.000000', NEW.received_at), 1, NEW.received_at)
    ON CONFLICT (calling_ae, sop_class_uid, hour) DO UPDATE SET
        objects = arrival_hour.objects + 1,
        last_received_at = max(arrival_hour.last_received_at, excluded.last_received_at);
    INSERT INTO image_series (series_instance_uid, sop_class_uid, facts, last_received_at,
                              dirty, published_count)
    SELECT NEW.image_series_uid, NEW.sop_class_uid, NEW.image_series_facts, NEW.received_at,
           1, 0
    WHERE NEW.image_series_uid IS NOT NULL
    ON CONFLICT (series_instance_uid) DO UPDATE SET
        last_received_at = excluded.last_received_at, dirty = excluded.dirty;
END""",
]

_POSTGRESQL = [
    f"CREATE VIEW object_arrival AS SELECT {_OBJECT_COLUMNS}, "
    "CAST(NULL AS varchar(64)) AS image_series_uid, CAST(NULL AS text) AS image_series_facts "
    "FROM dicom_object WHERE false",
    f"""CREATE FUNCTION object_arrival_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dicom_object ({_OBJECT_COLUMNS}) VALUES ({_NEW_OBJECT});
    INSERT INTO arrival_hour (calling_ae, sop_class_uid, hour, objects, last_received_at)
    VALUES (NEW.calling_ae, NEW.sop_class_uid,
            date_trunc('hour', NEW.received_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', 1,
            NEW.received_at)
    ON CONFLICT (calling_ae, sop_class_uid, hour) DO UPDATE SET
        objects = arrival_hour.objects + 1,
        last_received_at = greatest(arrival_hour.last_received_at, excluded.last_received_at);
    IF NEW.image_series_uid IS NOT NULL THEN
        INSERT INTO image_series (series_instance_uid, sop_class_uid, facts, last_received_at,
                                  dirty, published_count)
        VALUES (NEW.image_series_uid, NEW.sop_class_uid, NEW.image_series_facts::json,
                NEW.received_at, true, 0)
        ON CONFLICT (series_instance_uid) DO UPDATE SET
            last_received_at = excluded.last_received_at, dirty = excluded.dirty;
    END IF;
    RETURN NEW;
END
$$""",
    "CREATE TRIGGER object_arrival_insert INSTEAD OF INSERT ON object_arrival "
    "FOR EACH ROW EXECUTE FUNCTION object_arrival_insert()",
]


def upgrade() -> None:
    for statement in _POSTGRESQL if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW object_arrival")  # its trigger goes with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION object_arrival_insert()")
