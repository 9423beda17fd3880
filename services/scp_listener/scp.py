"""The DICOM side: one pynetdicom AE that accepts Verification and the RT storage classes,
rejects unknown callers at association, and answers C-STORE only after ``Ingestor.ingest``."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import structlog
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from services.scp_listener import sop
from services.scp_listener.devices import Device
from services.scp_listener.metrics import ScpMetrics
from services.scp_listener.service import Ingestor, Status
from services.scp_listener.settings import ScpSettings

log = structlog.get_logger(__name__)

# Received datasets go to a temporary file as they arrive instead of into memory: a 200-slice
# CBCT over one association never sits whole in RAM, and the file becomes the stored object.
_config.STORE_RECV_CHUNKED_DATASET = True


# Metric label of a failed C-STORE, where the status name is not the word operators look for.
_REJECTION_REASONS = {Status.PROCESSING_FAILURE: "internal_error"}


def build_ae(settings: ScpSettings, devices: dict[str, Device]) -> AE:
    ae = AE(ae_title=settings.scp_ae_title)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for uid in sop.STORAGE:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    # PS3.8 Table 9-21: rejected-permanent / service-user / calling-AE-title-not-recognized
    # (or called-AE-title-not-recognized) is what pynetdicom sends for these two checks.
    ae.require_calling_aet = sorted(devices)
    ae.require_called_aet = True
    ae.maximum_associations = settings.scp_max_associations
    ae.maximum_pdu_size = settings.scp_max_pdu
    ae.network_timeout = settings.scp_network_timeout_s
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.scp_network_timeout_s
    return ae


def start(
    settings: ScpSettings,
    devices: dict[str, Device],
    ingestor: Ingestor,
    metrics: ScpMetrics,
    *,
    port: int | None = None,
) -> ThreadedAssociationServer:
    """Start listening (port 0 picks a free one: see ``server.server_address``)."""
    ae = build_ae(settings, devices)
    handlers = [
        (evt.EVT_CONN_OPEN, _no_delay),
        (evt.EVT_REJECTED, _log_rejection, [settings, devices, metrics]),
        (evt.EVT_C_STORE, handle_store, [ingestor, devices, metrics]),
    ]
    server = ae.start_server(
        (settings.scp_host, settings.scp_port if port is None else port),
        block=False,
        evt_handlers=handlers,
    )
    log.info(
        "DICOM SCP listening",
        ae_title=settings.scp_ae_title,
        address=list(server.server_address),
        devices=sorted(devices),
    )
    return server


def _no_delay(event: Event) -> None:
    # Without TCP_NODELAY every small C-STORE response waits ~40 ms on Nagle + delayed ACK.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _log_rejection(
    event: Event, settings: ScpSettings, devices: dict[str, Device], metrics: ScpMetrics
) -> None:
    rq: Any = event.assoc.requestor.primitive
    calling = str(rq.calling_ae_title).strip()
    called = str(rq.called_ae_title).strip()
    if calling not in devices:
        reason = "unknown_calling_ae"
        words = (
            f"refused an association from AE title {calling!r}: it is not in the device "
            f"registry ({settings.scp_device_registry.name})"
        )
    elif called != settings.scp_ae_title:
        reason = "wrong_called_ae"
        words = (
            f"refused an association from {calling!r}: it called {called!r}, "
            f"but this SCP is {settings.scp_ae_title!r}"
        )
    else:
        reason = "too_many_associations"
        words = f"refused an association from {calling!r}: too many associations at once"
    metrics.rejections.labels(reason).inc()
    log.warning(
        words,
        reason=reason,
        calling_ae=calling,
        called_ae=called,
        peer=event.assoc.requestor.address,
    )


def handle_store(
    event: Event, ingestor: Ingestor, devices: dict[str, Device], metrics: ScpMetrics
) -> int:
    start_t = time.perf_counter()
    request: Any = event.request
    sop_class = str(request.AffectedSOPClassUID)
    calling = str(event.assoc.requestor.ae_title).strip()
    device = devices[calling]  # the association was refused for anyone else
    if sop_class not in sop.STORAGE:
        metrics.rejections.labels("sop_class_not_supported").inc()
        return Status.SOP_CLASS_NOT_SUPPORTED
    outcome = ingestor.ingest(
        Path(event.dataset_path),
        sop_class_uid=sop_class,
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        source=device.as_source(),
    )
    name = sop.NAMES.get(sop_class, sop_class)
    if outcome.status == Status.SUCCESS:
        metrics.store_seconds.labels(name).observe(time.perf_counter() - start_t)
        if outcome.created:
            metrics.objects.labels(name).inc()
            metrics.bytes.labels(name).inc(outcome.size)
            log.info(
                "stored",
                sop_class=name,
                sop_instance_uid=outcome.sop_instance_uid,
                calling_ae=calling,
                bytes=outcome.size,
            )
        else:
            metrics.duplicates.labels(name).inc()
            log.info(
                "duplicate ignored",
                sop_class=name,
                sop_instance_uid=outcome.sop_instance_uid,
                calling_ae=calling,
            )
    else:
        if outcome.status == Status.PROCESSING_FAILURE:
            metrics.internal_errors.inc()
        metrics.rejections.labels(
            _REJECTION_REASONS.get(outcome.status, outcome.status.name.lower())
        ).inc()
        log.warning(
            "C-STORE failed",
            status=f"0x{outcome.status:04X}",
            reason=outcome.reason,
            sop_class=name,
            sop_instance_uid=outcome.sop_instance_uid,
            calling_ae=calling,
        )
    return outcome.status
