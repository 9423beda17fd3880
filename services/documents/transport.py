"""Transmission of an approved letter: to an outbox folder (the default), to the EMR as an HL7
v2.5 MDM^T02 (original document notification and content) over MLLP, or by SMTP. A transport
raises ``TransmissionError`` when the letter did not arrive; the service keeps the letter
approved, records the error and tries again later (never lost)."""

from __future__ import annotations

import base64
import json
import os
import smtplib
import socket
import ssl
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from hl7apy.core import Message
from hl7apy.parser import parse_message

# MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): <VT> message <FS><CR>.
START, END = b"\x0b", b"\x1c\x0d"


class TransmissionError(Exception):
    """The letter was not delivered; the message says why (for the letter's ``last_error``)."""


@dataclass(frozen=True)
class Outgoing:
    letter_id: str
    patient_id: str
    patient_name: str | None  # DICOM PN: Family^Given^Middle
    birth_date: date | None
    course_id: str
    referring_provider: str | None  # DICOM PN
    author: str | None  # the approving physician
    approved_at: datetime
    pdf: bytes


class Transport(Protocol):
    name: str

    def send(self, letter: Outgoing, *, now: datetime) -> str:
        """Deliver the letter; return a reference (a path, a message control id)."""
        ...


class OutboxFolder:
    """Writes ``<letter id>.pdf`` and a JSON sidecar to a folder another system collects from
    (an interface engine's file drop, a print queue). Atomic: a reader never sees half a file."""

    name = "outbox"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, letter: Outgoing, *, now: datetime) -> str:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            meta = {
                "letter_id": letter.letter_id,
                "patient_id": letter.patient_id,
                "patient_name": letter.patient_name,
                "course_id": letter.course_id,
                "referring_provider": letter.referring_provider,
                "approved_by": letter.author,
                "approved_at": letter.approved_at.isoformat(),
                "written_at": now.isoformat(),
            }
            self._write(f"{letter.letter_id}.pdf", letter.pdf)
            self._write(f"{letter.letter_id}.json", json.dumps(meta, indent=2).encode())
        except OSError as exc:
            raise TransmissionError(f"outbox folder {self.folder}: {exc}") from exc
        return str(self.folder / f"{letter.letter_id}.pdf")

    def _write(self, name: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _escape(text: str | None) -> str:
    """HL7 v2 escape sequences (v2.5 ch. 2.7) for free text in a field."""
    if not text:
        return ""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def _xpn(pn: str | None) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) -> HL7 XPN (family^given^middle)."""
    parts = (pn or "").split("=")[0].split("^")
    return "^".join(_escape(p) for p in parts[:3]).rstrip("^")


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True)
class Hl7Parties:
    sending_application: str = "RTOPS"
    sending_facility: str = "RADONC"
    receiving_application: str = "EMR"
    receiving_facility: str = "HOSPITAL"


def mdm_t02(letter: Outgoing, *, control_id: str, now: datetime, parties: Hl7Parties) -> str:
    """The letter as an HL7 v2.5 MDM^T02: TXA (document header: CN consult note, AU
    authenticated, the letter id as unique document number) and one OBX carrying the PDF as
    an encapsulated-data (ED) value, Base64."""
    m = Message("MDM_T02", version="2.5")
    m.msh.msh_3 = _escape(parties.sending_application)
    m.msh.msh_4 = _escape(parties.sending_facility)
    m.msh.msh_5 = _escape(parties.receiving_application)
    m.msh.msh_6 = _escape(parties.receiving_facility)
    m.msh.msh_7 = _ts(now)
    m.msh.msh_9 = "MDM^T02^MDM_T02"
    m.msh.msh_10 = _escape(control_id)
    m.msh.msh_11 = "P"
    m.msh.msh_15 = "AL"
    m.msh.msh_16 = "NE"
    m.evn.evn_1 = "T02"
    m.evn.evn_2 = _ts(now)
    m.pid.pid_3 = _escape(letter.patient_id)
    if letter.patient_name:
        m.pid.pid_5 = _xpn(letter.patient_name)
    if letter.birth_date:
        m.pid.pid_7 = letter.birth_date.strftime("%Y%m%d")
    m.pv1.pv1_2 = "O"
    m.txa.txa_1 = "1"
    m.txa.txa_2 = "CN"
    m.txa.txa_3 = "AP"
    m.txa.txa_4 = _ts(letter.approved_at)
    if letter.author:
        m.txa.txa_9 = "^" + _xpn(letter.author)
    m.txa.txa_12 = _escape(letter.letter_id)
    m.txa.txa_17 = "AU"
    obs = m.add_group("MDM_T02_OBSERVATION")
    obs.obx.obx_1 = "1"
    obs.obx.obx_2 = "ED"
    obs.obx.obx_3 = "REFLETTER^Referring provider letter^L"
    obs.obx.obx_5 = "^application^pdf^Base64^" + base64.b64encode(letter.pdf).decode()
    obs.obx.obx_11 = "F"
    return m.to_er7()


def read_ack(raw: bytes, control_id: str) -> None:
    """Accept an ACK (MSA-1 AA / CA) for ``control_id``; raise ``TransmissionError`` with the
    receiver's text for a NACK (AE / AR / CE / CR) or anything else."""
    text = raw.decode("utf-8", "replace").strip("\x0b\x1c\r\n")
    try:
        ack = parse_message(text.replace("\n", "\r"), find_groups=False)
        code = ack.msa.msa_1.value
        acked = ack.msa.msa_2.value
        reason = ack.msa.msa_3.value if ack.msa.msa_3.value else ""
    except Exception as exc:  # hl7apy raises many types for a damaged message
        raise TransmissionError(f"unreadable acknowledgement: {text[:200]!r}") from exc
    if code in ("AA", "CA") and acked == control_id:
        return
    if code in ("AA", "CA"):
        raise TransmissionError(f"acknowledgement for {acked!r}, expected {control_id!r}")
    raise TransmissionError(f"NACK {code}: {reason or 'no reason given'}")


class MllpTransport:
    """Sends MDM^T02 to the EMR's MLLP listener and waits for its acknowledgement."""

    name = "mllp"

    def __init__(
        self, host: str, port: int, *, parties: Hl7Parties, timeout_s: float = 30.0
    ) -> None:
        self.host, self.port = host, port
        self.parties = parties
        self.timeout_s = timeout_s

    def send(self, letter: Outgoing, *, now: datetime) -> str:
        control_id = f"{letter.letter_id[:12]}-{_ts(now)}"
        message = mdm_t02(letter, control_id=control_id, now=now, parties=self.parties)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as s:
                s.sendall(START + message.encode("utf-8") + END)
                raw = b""
                while END not in raw:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise TransmissionError("the EMR closed the connection without an ACK")
                    raw += chunk
        except OSError as exc:
            raise TransmissionError(f"MLLP {self.host}:{self.port}: {exc}") from exc
        read_ack(raw.split(END)[0], control_id)
        return control_id


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` of an MLLP listener."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


class SmtpTransport:
    """Mails the PDF to the referring provider's practice (one configured address)."""

    name = "smtp"

    def __init__(self, url: str, *, sender: str, recipient: str, timeout_s: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps", "smtp+starttls"):
            raise ValueError(f"{url!r}: use smtp://, smtp+starttls:// or smtps://")
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender, self.recipient = sender, recipient
        self.timeout_s = timeout_s

    def send(self, letter: Outgoing, *, now: datetime) -> str:
        mail = EmailMessage()
        mail["From"], mail["To"] = self.sender, self.recipient
        mail["Subject"] = f"Radiation therapy started: patient {letter.patient_id}"
        mail.set_content("The letter about your patient's radiation therapy is attached.")
        mail.add_attachment(
            letter.pdf, maintype="application", subtype="pdf", filename=f"{letter.letter_id}.pdf"
        )
        try:
            if self.scheme == "smtps":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    timeout=self.timeout_s,
                    context=ssl.create_default_context(),
                )
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with client:
                if self.scheme == "smtp+starttls":
                    client.starttls(context=ssl.create_default_context())
                if self.user:
                    client.login(self.user, self.password or "")
                client.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            raise TransmissionError(f"SMTP {self.host}:{self.port}: {exc}") from exc
        return str(mail["Message-ID"] or f"smtp:{self.recipient}")
