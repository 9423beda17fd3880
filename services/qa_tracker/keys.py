"""What identifies a fraction: (patient, course, fraction group, fraction number).

The course is the plan's UID, or ``record:<uid>`` for a record that names no plan. The stored
``fraction.key`` column (and events' ``fraction_key``) is ``str(key)``:
``patient|course|group|number``, with an empty number when the record had none.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

SEPARATOR = "|"
RECORD_COURSE = "record:"  # the course of a record that names no plan


class RecordLike(Protocol):
    """The columns of a treatment record (a row or an ORM object) that name its fractions."""

    record_uid: str
    patient_id: str
    plan_uid: str | None
    fraction_group: int | None
    fraction_numbers: list[int] | None


class FractionKey(NamedTuple):
    patient_id: str
    course: str
    group: int
    number: int | None

    def __str__(self) -> str:
        number = "" if self.number is None else str(self.number)
        return SEPARATOR.join((self.patient_id, self.course, str(self.group), number))

    @classmethod
    def parse(cls, text: str) -> FractionKey:
        # Patient IDs may contain the separator: the last three fields are ours.
        patient_id, course, group, number = text.rsplit(SEPARATOR, 3)
        return cls(patient_id, course, int(group), int(number) if number else None)

    @property
    def plan_uid(self) -> str | None:
        return None if self.course.startswith(RECORD_COURSE) else self.course


def keys_of_record(record: RecordLike) -> list[FractionKey]:
    """Count a fraction once per (plan, fraction group, Current Fraction Number), not per
    record: an interrupted fraction spans records, even days (domain-dicom.md s. 4.2)."""
    course = record.plan_uid or f"{RECORD_COURSE}{record.record_uid}"
    group = record.fraction_group or 1
    numbers: list[int | None] = list(record.fraction_numbers or [None])
    return [FractionKey(record.patient_id, course, group, n) for n in numbers]
