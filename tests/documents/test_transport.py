"""Letter transmission: the MDM^T02 message, and MLLP against a real listener in the test
that answers an ACK, a NACK, nothing, or is not there; the outbox folder; the settings."""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hl7apy.parser import parse_message

from services.documents.settings import DocumentsSettings
from services.documents.transport import (
    END,
    START,
    Hl7Parties,
    MllpTransport,
    OutboxFolder,
    Outgoing,
    SmtpTransport,
    TransmissionError,
    mdm_t02,
)
from shared.settings import SettingError

NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
LETTER = Outgoing(
    letter_id="0f1e2d3c-letter",
    patient_id="DOC|001",
    patient_name="Doe^John",
    birth_date=date(1950, 1, 2),
    course_id="course:1.2.3",
    referring_provider="Referrer^Rita",
    author="olga",
    approved_at=NOW,
    pdf=b"%PDF-1.4 letter",
)


class Listener(socketserver.ThreadingTCPServer):
    """An EMR's MLLP listener: answers each framed message with ``reply(message)``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.received: list[str] = []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Listener = self.server  # type: ignore[assignment]
        data = b""
        while END not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        message = data.split(END)[0].lstrip(START).decode()
        server.received.append(message)
        if server.reply == "silent":
            self.request.close()
            return
        control_id = parse_message(message, find_groups=False).msh.msh_10.value
        ack = (
            f"MSH|^~\\&|EMR|HOSP|RTOPS|RADONC|20260302153000||ACK^T02^ACK|A1|P|2.5\r"
            f"MSA|{server.reply}|{control_id}|{'unknown patient' if server.reply != 'AA' else ''}"
        )
        self.request.sendall(START + ack.encode() + END)


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    server = Listener(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def transport(server: Listener) -> MllpTransport:
    host, port = server.server_address[:2]
    return MllpTransport(str(host), int(port), parties=Hl7Parties(), timeout_s=5)


def test_mdm_t02_carries_the_pdf_and_escapes_text() -> None:
    er7 = mdm_t02(LETTER, control_id="ctl-1", now=NOW, parties=Hl7Parties())
    message = parse_message(er7, find_groups=False)
    assert message.msh.msh_9.to_er7() == "MDM^T02^MDM_T02"
    assert message.msh.msh_10.value == "ctl-1"
    assert message.pid.pid_3.to_er7() == "DOC\\F\\001"
    assert message.txa.txa_12.to_er7() == "0f1e2d3c-letter"
    obx5 = er7.split("\r")[-1].split("|")[5]
    assert base64.b64decode(obx5.split("^")[4]) == LETTER.pdf


@pytest.mark.parametrize("listener", ["AA"], indirect=True)
def test_an_ack_delivers_the_letter(listener: Listener) -> None:
    reference = transport(listener).send(LETTER, now=NOW)
    assert reference.startswith("0f1e2d3c-let")
    [message] = listener.received
    assert "MDM^T02" in message and "TXA|1|CN|AP" in message


@pytest.mark.parametrize("listener", ["AE", "AR"], indirect=True)
def test_a_nack_is_a_failed_transmission_with_the_reason(listener: Listener) -> None:
    with pytest.raises(TransmissionError, match=r"NACK A[ER]: unknown patient"):
        transport(listener).send(LETTER, now=NOW)


@pytest.mark.parametrize("listener", ["silent"], indirect=True)
def test_no_ack_is_a_failed_transmission(listener: Listener) -> None:
    with pytest.raises(TransmissionError, match="without an ACK"):
        transport(listener).send(LETTER, now=NOW)


def test_nobody_listening_is_a_failed_transmission() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransmissionError, match=r"MLLP 127\.0\.0\.1"):
        MllpTransport("127.0.0.1", port, parties=Hl7Parties(), timeout_s=2).send(LETTER, now=NOW)


def test_outbox_folder_writes_atomically(tmp_path: Path) -> None:
    path = OutboxFolder(tmp_path / "out").send(LETTER, now=NOW)
    assert Path(path).read_bytes() == LETTER.pdf
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "0f1e2d3c-letter.json",
        "0f1e2d3c-letter.pdf",
    ]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(TransmissionError, match="outbox folder"):
        OutboxFolder(blocked / "sub").send(LETTER, now=NOW)


def test_settings_choose_the_transport(tmp_path: Path) -> None:
    base = {"var_dir": tmp_path}
    assert isinstance(DocumentsSettings(**base).transport(), OutboxFolder)
    mllp = DocumentsSettings(
        **base, documents_transport="mllp", documents_mllp_endpoint="emr.example:2575"
    ).transport()
    assert isinstance(mllp, MllpTransport) and (mllp.host, mllp.port) == ("emr.example", 2575)
    with pytest.raises(SettingError, match="MLLP_ENDPOINT"):
        DocumentsSettings(**base, documents_transport="mllp").transport()
    with pytest.raises(SettingError, match="host:port"):
        DocumentsSettings(
            **base, documents_transport="mllp", documents_mllp_endpoint="emr"
        ).transport()
    with pytest.raises(SettingError, match="SMTP_URL"):
        DocumentsSettings(**base, documents_transport="smtp").transport()


class SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, MAIL, RCPT, DATA, QUIT."""

    def handle(self) -> None:
        server: SmtpListener = self.server  # type: ignore[assignment]
        self.wfile.write(b"220 test ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"EHLO" or verb == b"HELO":
                self.wfile.write(b"250 test\r\n")
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                self.wfile.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                self.wfile.write(server.rcpt_reply)
            elif verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                body = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    body += chunk
                server.messages.append(body)
                self.wfile.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"502 not implemented\r\n")


class SmtpListener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, rcpt_reply: bytes) -> None:
        self.rcpt_reply = rcpt_reply
        self.messages: list[bytes] = []
        super().__init__(("127.0.0.1", 0), SmtpHandler)


@pytest.fixture
def smtp(request: pytest.FixtureRequest) -> Iterator[SmtpListener]:
    server = SmtpListener(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("smtp", [b"250 OK\r\n"], indirect=True)
def test_smtp_mails_the_pdf(smtp: SmtpListener) -> None:
    from email import message_from_bytes

    port = smtp.server_address[1]
    transport = SmtpTransport(
        f"smtp://127.0.0.1:{port}", sender="rtops@clinic.test", recipient="gp@practice.test"
    )
    transport.send(LETTER, now=NOW)
    [raw] = smtp.messages
    mail = message_from_bytes(raw)
    assert mail["To"] == "gp@practice.test" and "DOC|001" in mail["Subject"]
    [attachment] = [p for p in mail.walk() if p.get_content_type() == "application/pdf"]
    assert attachment.get_payload(decode=True) == LETTER.pdf


@pytest.mark.parametrize("smtp", [b"550 no such user\r\n"], indirect=True)
def test_a_refused_recipient_is_a_failed_transmission(smtp: SmtpListener) -> None:
    port = smtp.server_address[1]
    transport = SmtpTransport(
        f"smtp://127.0.0.1:{port}", sender="rtops@clinic.test", recipient="nobody@practice.test"
    )
    with pytest.raises(TransmissionError, match="SMTP 127"):
        transport.send(LETTER, now=NOW)
    assert smtp.messages == []
