"""The SCP with pynetdicom's own PDU reader instead of ``services.scp_listener.pdu_reader``,
for ``bench.scp_pdu --stock-reader`` only: the "before" of the comparison. Never run it for real
data: it has no bound on the PDU length."""

from __future__ import annotations

from services.scp_listener.lean import keep_lean

if __name__ == "__main__":
    keep_lean()  # before pydicom is imported, as in the SCP's own entry point
    from pynetdicom.dul import DULServiceProvider

    stock = DULServiceProvider._read_pdu_data
    import services.scp_listener.scp  # noqa: F401 - installs pdu_reader at import

    DULServiceProvider._read_pdu_data = stock  # type: ignore[method-assign]
    from services.scp_listener.__main__ import main

    main()
