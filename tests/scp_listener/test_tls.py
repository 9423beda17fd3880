"""DICOM over TLS beside the plain port (issue 15): certificates made here (a CA, the SCP's
certificate, a device's, and a device's from another CA), the pynetdicom TLS client and
DCMTK's ``echoscu``/``storescu +tls``; a client without a valid certificate is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import generate_latest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from services.scp_listener.app import SERVICE, create_app
from services.scp_listener.store import DicomObject
from services.scp_listener.tls import TlsSettingError, server_context
from shared.db import make_engine, session_factory
from tests import dicom_factories as f
from tests.conftest import dcmtk_tool
from tests.support import RunningScp, pynetdicom_echo, scp_settings


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate signed by another CA
    stranger_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    signer_cert, signer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer_cert.subject if signer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "srv", "cli", "oca", "str")}
    ca = _cert("rtops test CA", keys["ca"], None)
    other_ca = _cert("another CA", keys["oca"], None)
    return Pki(
        ca=_pem(ca, d / "ca.pem"),
        server_cert=_pem(_cert("rtops", keys["srv"], (ca, keys["ca"]), server=True), d / "srv.pem"),
        server_key=_write_key(keys["srv"], d / "srv.key"),
        client_cert=_pem(_cert("TRUEBEAM1", keys["cli"], (ca, keys["ca"])), d / "client.pem"),
        client_key=_write_key(keys["cli"], d / "client.key"),
        stranger_cert=_pem(
            _cert("TRUEBEAM1", keys["str"], (other_ca, keys["oca"])), d / "stranger.pem"
        ),
        stranger_key=_write_key(keys["str"], d / "stranger.key"),
    )


def tls_overrides(pki: Pki) -> dict[str, object]:
    return {
        "scp_tls_port": 0,
        "scp_tls_cert": pki.server_cert,
        "scp_tls_key": pki.server_key,
        "scp_tls_client_ca": pki.ca,
    }


def tls_port(scp: RunningScp) -> int:
    return int(scp.app.state.dicom_listeners.tls.server_address[1])


def client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    ctx.check_hostname = False  # DICOM nodes are addressed by AE title and IP
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_associate(port: int, ctx: ssl.SSLContext, *, storage: bool = False) -> Any:
    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(Verification)
    if storage:
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.481.4")  # RT Beams Treatment Record
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="RTOPS", tls_args=(ctx, None))


def stored(scp: RunningScp) -> int:
    engine = make_engine(scp.settings, SERVICE)
    try:
        with session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(DicomObject)) or 0
    finally:
        engine.dispose()


def handshake_failures(scp: RunningScp) -> float:
    text = generate_latest(scp.app.state.registry).decode()
    line = 'rtops_scp_rejections_total{reason="tls_handshake_failed"}'
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


# ---------------------------------------------------------------- pynetdicom


def test_pynetdicom_tls_client_beside_the_plain_port(
    start_scp: Callable[..., RunningScp], pki: Pki
) -> None:
    scp = start_scp(**tls_overrides(pki))
    port = tls_port(scp)
    assert port != scp.dicom_port

    assoc = tls_associate(port, client_context(pki, pki.client_cert, pki.client_key), storage=True)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        record = f.treatment_record(plan_uid=None)
        assert assoc.send_c_store(record).Status == 0
    finally:
        assoc.release()
    assert stored(scp) == 1
    # The plain port still works beside it.
    assert pynetdicom_echo(scp.dicom_port).Status == 0


def test_clients_without_a_valid_certificate_are_refused(
    start_scp: Callable[..., RunningScp], pki: Pki
) -> None:
    scp = start_scp(**tls_overrides(pki))
    port = tls_port(scp)
    for cert, key in ((pki.stranger_cert, pki.stranger_key), (None, None)):
        assoc = tls_associate(port, client_context(pki, cert, key), storage=True)
        assert not assoc.is_established
    assert stored(scp) == 0
    assert handshake_failures(scp) == 2
    reasons = [p.reason for p in scp.app.state.problems.newest_first()]
    assert reasons == ["tls_handshake_failed"] * 2


def test_a_silent_connection_does_not_block_the_tls_port(
    start_scp: Callable[..., RunningScp], pki: Pki
) -> None:
    """pynetdicom handshakes in its accept loop: one client that never speaks stopped every
    TLS connection behind it (until the network timeout)."""
    scp = start_scp(**tls_overrides(pki), scp_association_request_timeout_s=2.0)
    port = tls_port(scp)
    with socket.create_connection(("127.0.0.1", port)):
        assoc = tls_associate(port, client_context(pki, pki.client_cert, pki.client_key))
        assert assoc.is_established
        assoc.release()


def test_tls_settings_are_checked_at_start(
    pki: Pki, tmp_path: Path, base_settings: dict[str, object]
) -> None:
    def settings(**changes: object) -> Any:
        return scp_settings(base_settings, **{**tls_overrides(pki), **changes})

    assert server_context(scp_settings(base_settings)) is None  # no TLS port: no TLS
    assert server_context(settings()).verify_mode == ssl.CERT_REQUIRED
    assert server_context(settings()).minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(TlsSettingError, match=r"RTOPS_SCP_TLS_CERT: .*missing.pem does not"):
        server_context(settings(scp_tls_cert=tmp_path / "missing.pem"))
    with pytest.raises(TlsSettingError, match="RTOPS_SCP_TLS_CLIENT_CA is not"):
        server_context(settings(scp_tls_client_ca=None))
    with pytest.raises(TlsSettingError, match="is not the private key of the certificate"):
        server_context(settings(scp_tls_key=pki.client_key))
    with pytest.raises(TlsSettingError, match=r"RTOPS_SCP_TLS_CLIENT_CA .* no usable"):
        server_context(settings(scp_tls_client_ca=pki.client_key))
    # create_app checks them before anything starts (serve() turns this into exit status 2).
    with pytest.raises(TlsSettingError):
        create_app(settings(scp_tls_key=pki.client_key))


# ---------------------------------------------------------------- DCMTK


@pytest.fixture(scope="module")
def dcmtk_tls() -> dict[str, str]:
    tools = {name: dcmtk_tool(name) for name in ("echoscu", "storescu")}
    if not all(tools.values()):
        pytest.skip("DCMTK not installed")
    version = subprocess.run(
        [str(tools["storescu"]), "--version"], capture_output=True, text=True, check=False
    )
    if "openssl" not in (version.stdout + version.stderr).lower():
        pytest.skip("this DCMTK is built without OpenSSL (no +tls)")
    return tools  # type: ignore[return-value]


def _dcmtk(
    tool: str, port: int, *tls: str, files: tuple[Path, ...] | list[Path] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [tool, *tls, "-aet", "TRUEBEAM1", "-aec", "RTOPS", "127.0.0.1", str(port)]
    return subprocess.run(
        [*cmd, *map(str, files)], capture_output=True, text=True, timeout=60, check=False
    )


def test_dcmtk_echoscu_and_storescu_over_tls(
    start_scp: Callable[..., RunningScp], pki: Pki, dcmtk_tls: dict[str, str], tmp_path: Path
) -> None:
    scp = start_scp(**tls_overrides(pki))
    port = tls_port(scp)
    good = ("+tls", str(pki.client_key), str(pki.client_cert), "-pw", "+cf", str(pki.ca))
    echo = _dcmtk(dcmtk_tls["echoscu"], port, *good)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    files = f.write_series(
        [*f.cbct_series(n_slices=3), f.treatment_record(plan_uid=None)], tmp_path
    )
    sent = _dcmtk(dcmtk_tls["storescu"], port, *good, files=files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert stored(scp) == 4

    stranger = ("+tls", str(pki.stranger_key), str(pki.stranger_cert), "-pw", "+cf", str(pki.ca))
    assert _dcmtk(dcmtk_tls["echoscu"], port, *stranger).returncode != 0
    anonymous = ("+tla", "+cf", str(pki.ca))
    assert _dcmtk(dcmtk_tls["echoscu"], port, *anonymous).returncode != 0
    more = f.write_series([f.treatment_record(plan_uid=None)], tmp_path / "more")
    assert _dcmtk(dcmtk_tls["storescu"], port, *stranger, files=more).returncode != 0
    assert stored(scp) == 4
    # Plain DICOM on its own port, beside TLS.
    plain = _dcmtk(dcmtk_tls["echoscu"], scp.dicom_port)
    assert plain.returncode == 0, plain.stdout + plain.stderr
