"""Work handed to helper threads only while the SCP process serves one connection (issue 14;
services/scp_listener/connections.py): with several, large fragments are hashed on the
receiving thread itself, and the result is the same. Spool files come from the reserve with
one connection or several."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from services.scp_listener import connections, receive
from services.scp_listener.receive import SpoolFile
from tests.support import RunningScp, wait_for


def _associate(port: int) -> object:
    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RTOPS")
    assert assoc.is_established
    return assoc


def test_the_process_counts_the_connections_it_serves(scp: RunningScp) -> None:
    before = connections._open  # the SCP runs in this process
    first = _associate(scp.dicom_port)
    wait_for(lambda: connections._open == before + 1, 5, message="one connection counted")
    second = _associate(scp.dicom_port)
    wait_for(lambda: connections._open == before + 2, 5, message="two connections counted")
    assert not connections.alone()
    first.release()  # type: ignore[attr-defined]
    wait_for(lambda: connections._open == before + 1, 5, message="a release counted")
    second.abort()  # type: ignore[attr-defined]
    wait_for(lambda: connections._open == before, 5, message="an abort counted")


@pytest.mark.parametrize("served", [1, 3], ids=["alone", "with-others"])
def test_large_fragments_are_hashed_behind_only_when_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: int
) -> None:
    monkeypatch.setattr(connections, "_open", served)
    receive.configure(tmp_path / "spool")
    try:
        spool = SpoolFile(delete=False, mode="wb", suffix=".dcm")
        fragments = [b"\x00" * 132, b"\x01" * receive.HASH_BEHIND_MIN, b"\x02" * 10]
        for fragment in fragments:
            spool.write(fragment)
        assert (spool._behind is not None) is (served == 1)
        spool.close()
        whole = b"".join(fragments)
        assert spool.content() == (hashlib.sha256(whole).hexdigest(), len(whole))
        assert Path(spool.name).read_bytes() == whole
    finally:
        receive.configure(tmp_path / "other")  # no reserve left filling this test's folder


@pytest.mark.parametrize("served", [1, 3], ids=["alone", "with-others"])
def test_spool_files_come_from_the_reserve_with_one_connection_or_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: int
) -> None:
    folder = tmp_path / "spool"
    try:
        receive.configure(folder)
        wait_for(lambda: len(list(folder.iterdir())) == receive.RESERVE, 5, 0.01, "filled")
        ready = {str(p) for p in folder.iterdir()}
        monkeypatch.setattr(connections, "_open", served)
        spool = SpoolFile(delete=False, mode="wb", suffix=".dcm")
        assert spool.name in ready
        assert Path(spool.name).parent == folder
        spool.close()
    finally:
        receive.configure(tmp_path / "other")


def test_the_reserve_is_topped_up_once_half_of_it_is_taken(tmp_path: Path) -> None:
    """One wake-up of the reserve's thread per half of it, not per file: woken for every file,
    it cost ten senders more than it saved (docs/scp_performance.md, "The tenth session")."""
    folder = tmp_path / "spool"
    half = receive.RESERVE // 2
    try:
        receive.configure(folder)
        wait_for(lambda: len(list(folder.iterdir())) == receive.RESERVE, 5, 0.01, "filled")
        taken = [SpoolFile(delete=False, mode="wb", suffix=".dcm") for _ in range(half)]
        time.sleep(0.3)  # time enough for a woken thread to create a file
        assert len(list(folder.iterdir())) == receive.RESERVE  # half left: not woken
        taken.append(SpoolFile(delete=False, mode="wb", suffix=".dcm"))
        wait_for(  # fewer than half left: filled up again, around the taken ones
            lambda: len(list(folder.iterdir())) == receive.RESERVE + len(taken),
            5,
            0.01,
            "topped up",
        )
        for spool in taken:
            spool.close()
    finally:
        receive.configure(tmp_path / "other")
