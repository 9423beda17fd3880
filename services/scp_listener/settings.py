"""Settings of the DICOM SCP (``RTOPS_SCP_*`` plus the shared ``RTOPS_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import RtopsSettings

DEV_DEVICES = Path(__file__).with_name("devices.yaml")


class ScpSettings(RtopsSettings):
    model_config = SettingsConfigDict(env_prefix="RTOPS_", extra="ignore")

    scp_ae_title: str = Field(default="RTOPS", description="our AE title; callers must use it")
    scp_host: str = "0.0.0.0"
    scp_port: int = Field(default=11112, description="DICOM port (104 behind a k8s Service)")
    scp_http_host: str = "0.0.0.0"
    scp_http_port: int = Field(default=8000, description="health, readiness and metrics")
    scp_device_registry: Path = Field(
        default=DEV_DEVICES, description="YAML: calling AE titles allowed to connect"
    )
    scp_device_registry_poll_s: float = Field(
        default=2.0,
        description="how often the registry file is checked for changes (reloaded without a "
        "restart; SIGHUP reloads at once)",
    )
    scp_object_store: Path | None = Field(
        default=None, description="where objects are kept; default var_dir/objects"
    )
    scp_series_quiet_s: float = Field(
        default=30.0,
        description="fallback: an image series is published when the association that "
        "delivered it is released, else once no instance arrived for this long (a series "
        "spread over associations, or an aborted one); a later instance re-publishes it",
    )
    scp_sweep_interval_s: float = Field(
        default=2.0, description="how often quiet series are looked for"
    )
    scp_max_pdu: int = Field(
        default=262144,
        description="maximum length of a P-DATA-TF PDU we receive, advertised at association "
        "(PS3.8 D.3.3.1); a longer PDU aborts the association unread; 0 = unlimited (no bound "
        "on the memory one PDU takes). 256 KiB: above any DCMTK sender's 128 KiB, and larger "
        "PDUs saved no measurable CPU (docs/scp_performance.md)",
    )
    scp_network_timeout_s: float = 60.0
    scp_max_associations: int = Field(default=16, description="concurrent associations")
    scp_max_associations_per_peer: int = Field(
        default=4,
        description="concurrent connections from one IP address; more are closed at once, so "
        "one peer cannot take every association slot",
    )
    scp_association_request_timeout_s: float = Field(
        default=5.0,
        description="a connection that has not sent its A-ASSOCIATE-RQ by then is closed (the "
        "DUL's ARTIM timer, PS3.8 9.1.5; also bounds the wait for A-RELEASE-RP)",
    )
    scp_max_sequence_depth: int = Field(
        default=16,
        description="deepest sequence nesting accepted; deeper objects are refused with 0xC210",
    )
    scp_spool_dir: Path | None = Field(
        default=None,
        description="where C-STORE data sets are written as they arrive; emptied at start; "
        "default var_dir/spool (same filesystem as the object store: a rename, not a copy)",
    )

    scp_processes: int = Field(
        default=0,
        ge=0,
        description="SCP processes serving the DICOM port(s) together (the parent accepts and "
        "gives each connection to the least busy); 0 = the number of CPU cores",
    )
    scp_cpu_pinning: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="auto: each SCP process on a CPU of its own when the processes cover "
        "every CPU they may run on (the default number of processes does); on: whatever "
        "their number (a machine of its own); off: never (docs/scp_scale.md)",
    )
    scp_confirm_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="how often objects stored since the last round are confirmed durable in "
        "the index (docs/scp_durability.md); after a power cut the start-up scan covers about "
        "this long",
    )
    scp_tls_port: int | None = Field(
        default=None,
        description="DICOM over TLS on this port, beside the plain port (None: no TLS port)",
    )
    scp_tls_cert: Path | None = Field(default=None, description="PEM certificate chain of the SCP")
    scp_tls_key: Path | None = Field(default=None, description="PEM private key of the SCP")
    scp_tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: clients must present a certificate signed by one of these",
    )

    def spool_dir(self) -> Path:
        return self.scp_spool_dir or self.var_dir / "spool"

    def object_store(self) -> Path:
        return self.scp_object_store or self.var_dir / "objects"
