"""Each patient's billing state as the last evaluation left it, kept in memory between
evaluations: the stored facts' heads, the charges' heads, the course ids, the staff closures
and kinds. An evaluation of a patient held here at the generation it left reads none of it
from the tables again (measured: those reads were a quarter of the consumer's time).

The tables stay the truth. ``PatientGeneration`` counts the writes to each patient, and an
entry is trusted only at the generation its evaluation wrote; any other writer (a replica,
an export, a staff closure) raises the counter, so the entry is read again. Entries are
replaced only after their transaction committed (``PatientMemos.keep``), so a rolled-back
batch leaves nothing behind. Bounded: the least recently evaluated patients go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from services.billing.store.queries import ChargeHead, ClosureHead, FactHead


@dataclass(frozen=True)
class PatientMemo:
    generation: int
    facts: tuple[FactHead, ...]  # in (kind, key, revision) order, as ``fact_heads_of_many``
    charges: Mapping[str, ChargeHead]
    courses: Mapping[str, str]  # course id -> its row as written (repr, without evaluated_at)
    closures: tuple[ClosureHead, ...]
    kinds: Mapping[str, str]


class PatientMemos:
    def __init__(self, max_patients: int = 2_000) -> None:
        self._max = max_patients
        self._held: OrderedDict[str, PatientMemo] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def at(self, patient_id: str, generation: int) -> PatientMemo | None:
        """The entry left at ``generation`` (the patient's counter before this transaction
        raised it), else None."""
        memo = self._held.get(patient_id)
        if memo is None or memo.generation != generation:
            return None
        self._held.move_to_end(patient_id)
        return memo

    def keep(self, memos: Mapping[str, PatientMemo]) -> None:
        """After the commit of the transaction that wrote them."""
        for patient_id, memo in memos.items():
            self._held[patient_id] = memo
            self._held.move_to_end(patient_id)
        while len(self._held) > self._max:
            self._held.popitem(last=False)

    def forget(self) -> None:
        self._held.clear()
