"""DICOM over TLS on its own port: the SCP's ``ssl.SSLContext``, built and checked at start.

The profile is PS3.15 B.9 (BCP 195 TLS Secure Transport Connection Profile) as B.11 extends
it: TLS 1.2 or newer, only AEAD cipher suites with forward secrecy (RFC 9325 section 4.2, which
BCP 195 now is), and mutual authentication: a client must present a certificate signed by one
of the CAs in ``RTOPS_SCP_TLS_CLIENT_CA`` (PS3.15 B.9: "the node shall verify the certificate
of the peer"), else the handshake fails before any DICOM byte is read.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from services.scp_listener.settings import ScpSettings
from shared.settings import SettingError

# RFC 9325 4.2: the TLS 1.2 suites to offer (ECDHE/DHE key exchange, AES-GCM or ChaCha20-Poly1305).
# TLS 1.3's suites are all of that kind and are configured by OpenSSL itself.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


class TlsSettingError(SettingError):
    """The TLS settings cannot work; the message names the setting and what to fix."""


def _readable(path: Path | None, setting: str, what: str) -> Path:
    if path is None:
        raise TlsSettingError(f"RTOPS_SCP_TLS_PORT is set but {setting} is not: give {what}")
    if not path.is_file():
        raise TlsSettingError(f"{setting}: {path} does not exist or is not a file ({what})")
    try:
        path.read_bytes()
    except OSError as exc:
        raise TlsSettingError(f"{setting}: {path} cannot be read ({exc.strerror})") from None
    return path


def server_context(settings: ScpSettings) -> ssl.SSLContext | None:
    """The TLS port's context, or None when ``scp_tls_port`` is not set. Raises
    ``TlsSettingError`` (one line for the operator) on a missing or unreadable file, a key that
    does not match the certificate, or a CA file with no certificate in it."""
    if settings.scp_tls_port is None:
        return None
    if settings.scp_tls_port == settings.scp_port and settings.scp_port != 0:
        raise TlsSettingError(
            f"RTOPS_SCP_TLS_PORT and RTOPS_SCP_PORT are both {settings.scp_port}: plain DICOM "
            "and DICOM over TLS need ports of their own"
        )
    cert = _readable(settings.scp_tls_cert, "RTOPS_SCP_TLS_CERT", "the SCP's PEM certificate")
    key = _readable(settings.scp_tls_key, "RTOPS_SCP_TLS_KEY", "the SCP's PEM private key")
    cas = _readable(
        settings.scp_tls_client_ca,
        "RTOPS_SCP_TLS_CLIENT_CA",
        "the PEM CA certificate(s) that sign the devices' client certificates",
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsSettingError(
                f"RTOPS_SCP_TLS_KEY ({key}) is not the private key of the certificate in "
                f"RTOPS_SCP_TLS_CERT ({cert})"
            ) from None
        raise TlsSettingError(
            f"RTOPS_SCP_TLS_CERT / RTOPS_SCP_TLS_KEY ({cert}, {key}) cannot be used: "
            f"{exc.reason or exc} (PEM certificate chain and unencrypted PEM key expected)"
        ) from None
    except OSError as exc:  # a password-protected key asks for a password we do not have
        raise TlsSettingError(f"RTOPS_SCP_TLS_KEY ({key}) cannot be used: {exc}") from None
    try:
        ctx.load_verify_locations(cafile=cas)
    except ssl.SSLError as exc:
        raise TlsSettingError(
            f"RTOPS_SCP_TLS_CLIENT_CA ({cas}) holds no usable PEM certificate: {exc.reason or exc}"
        ) from None
    if not ctx.get_ca_certs():
        raise TlsSettingError(f"RTOPS_SCP_TLS_CLIENT_CA ({cas}) holds no CA certificate")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
