"""The DICOM side: one pynetdicom AE that accepts Verification and the RT storage classes,
rejects unknown callers at association, and answers C-STORE only after ``Ingestor.ingest``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import structlog
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from services.scp_listener import (
    after_answer,
    connections,
    early_close,
    pdu_reader,
    receive,
    sop,
    store_assembly,
)
from services.scp_listener.devices import DeviceRegistry
from services.scp_listener.metrics import Problem, ScpMetrics
from services.scp_listener.service import Ingestor, Status
from services.scp_listener.settings import ScpSettings
from shared.natsd import explain_bind_error

log = structlog.get_logger(__name__)

# Received datasets go to a temporary file as they arrive instead of into memory: a 200-slice
# CBCT over one association never sits whole in RAM, and the file becomes the stored object.
_config.STORE_RECV_CHUNKED_DATASET = True
# pynetdicom's standard handlers describe every PDU and DIMSE message to its logger at INFO and
# DEBUG, which shared.logging keeps at WARNING: they cost CPU per PDU for lines nobody sees,
# and a bound EVT_DIMSE_SENT handler keeps inline_store's direct response encoding off.
_config.LOG_HANDLER_LEVEL = "none"
# ... and hashed as it arrives, instead of being read back for its content address.
receive.install()
early_close.install()
# An image's index row is written after its response is sent (after_answer).
after_answer.install()


# Metric label of a failed C-STORE, where the status name is not the word operators look for.
_REJECTION_REASONS = {Status.PROCESSING_FAILURE: "internal_error"}
NOT_AUTHORIZED = 0x0124  # PS3.7 C.4: Refused: Not Authorized


def build_ae(settings: ScpSettings, registry: DeviceRegistry) -> AE:
    ae = AE(ae_title=settings.scp_ae_title)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for uid in sop.STORAGE:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    # PS3.8 Table 9-21: rejected-permanent / service-user / calling-AE-title-not-recognized
    # (or called-AE-title-not-recognized) is what pynetdicom sends for these two checks.
    # pynetdicom reads require_calling_aet per association: a reloaded registry applies to the
    # next association (the registry is never empty, which would mean "anyone").
    registry.subscribe(lambda devices: setattr(ae, "require_calling_aet", sorted(devices)))
    ae.require_called_aet = True
    ae.maximum_associations = settings.scp_max_associations
    ae.maximum_pdu_size = settings.scp_max_pdu
    ae.network_timeout = settings.scp_network_timeout_s
    # The ARTIM timer (PS3.8 9.1.5): a connection silent past it, before its A-ASSOCIATE-RQ,
    # is closed instead of holding an association slot for 30 s.
    ae.acse_timeout = settings.scp_association_request_timeout_s
    ae.dimse_timeout = settings.scp_network_timeout_s
    return ae


class DicomServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, plus: ``dispatch`` (with several SCP processes, the
    parent's balancer may pass an accepted connection to a worker: processes.py), and a TLS
    handshake done in the connection's own thread under a deadline. pynetdicom wraps and
    handshakes in its accept loop, where one client that connects and never sends its
    ClientHello stopped every other TLS connection from being accepted."""

    handshake_timeout_s = 5.0
    on_handshake_failure: Any = None  # called with (peer address, reason)
    # (socket, peer address, is TLS) -> True when another process took the connection
    dispatch: Callable[[socket.socket, Any, bool], bool] | None = None
    on_connection_end: Callable[[], None] | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.dispatch is not None and self.dispatch(
            request, client_address, self.ssl_context is not None
        ):
            # Close this process's descriptor only: shutdown_request would end the
            # connection for the worker that holds it now.
            request.close()
            return
        super().process_request(request, client_address)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.shutdown_request(request)
            if self.on_connection_end is not None:
                self.on_connection_end()  # no association, so no EVT_CONN_CLOSE
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, sock: ssl.SSLSocket, client_address: Any) -> bool:
        try:
            sock.settimeout(self.handshake_timeout_s)
            sock.do_handshake()
            sock.settimeout(None)  # pynetdicom's reads select() on a blocking socket
            return True
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError | socket.timeout):
                reason = f"no TLS handshake within {self.handshake_timeout_s:g} s"
            if self.on_handshake_failure is not None:
                self.on_handshake_failure(client_address, str(reason))
            return False


@dataclass
class Listeners:
    """The DICOM server(s) of one process: the plain port, and the TLS port when configured,
    sharing one AE (so ``scp_max_associations`` counts both)."""

    plain: DicomServer
    tls: DicomServer | None = None

    @property
    def ports(self) -> tuple[int, int | None]:
        return self.plain.server_address[1], self.tls.server_address[1] if self.tls else None

    @property
    def active_associations(self) -> list[Any]:
        return [a for s in self.servers for a in s.active_associations]

    @property
    def servers(self) -> list[DicomServer]:
        return [self.plain, *([self.tls] if self.tls else [])]

    def shutdown(self) -> None:
        """Stop accepting on every port (associations in progress go on)."""
        for server in self.servers:
            server.shutdown()


def start(
    settings: ScpSettings,
    registry: DeviceRegistry,
    ingestor: Ingestor,
    metrics: ScpMetrics,
    *,
    port: int | None = None,
) -> ThreadedAssociationServer:
    """Start listening on the plain port only (port 0 picks a free one: see
    ``server.server_address``)."""
    return listen(settings, registry, ingestor, metrics, port=port).plain


def listen(
    settings: ScpSettings,
    registry: DeviceRegistry,
    ingestor: Ingestor,
    metrics: ScpMetrics,
    *,
    port: int | None = None,
    tls_port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    host: str | None = None,
    dispatch: Callable[[socket.socket, Any, bool], bool] | None = None,
    on_connection_end: Callable[[], None] | None = None,
    spool: Path | None = None,
) -> Listeners:
    """Listen on the plain port, and on ``tls_port`` with ``ssl_context`` when both are given.
    ``host``: instead of the settings' (a worker's servers take passed connections and listen
    on loopback port 0 only). ``dispatch``: may pass an accepted connection to another SCP
    process; ``on_connection_end``: called when a connection this process served closes.
    ``spool``: this process's receive directory (emptied now), default the settings' spool."""
    receive.configure(spool or settings.spool_dir())
    ae = build_ae(settings, registry)
    touched = TouchedSeries()
    handlers = [
        (evt.EVT_CONN_OPEN, _no_delay),
        (evt.EVT_CONN_OPEN, connections.opened),
        # First of the close handlers: a row kept for after an answer never sent is written.
        (evt.EVT_CONN_CLOSE, after_answer.forget),
        (evt.EVT_CONN_CLOSE, connections.closed),
        (evt.EVT_REJECTED, _log_rejection, [settings, registry, metrics]),
        (evt.EVT_ACCEPTED, _log_acceptance, [registry, metrics]),
        (evt.EVT_C_ECHO, handle_echo, [registry]),
        (evt.EVT_C_STORE, handle_store, [ingestor, registry, metrics, touched]),
        (evt.EVT_RELEASED, publish_on_release, [ingestor, touched]),
        # An aborted or dropped association publishes nothing: its sender will likely send
        # the series again, and the quiet window publishes what it left.
        (evt.EVT_ABORTED, touched.forget),
        (evt.EVT_CONN_CLOSE, touched.forget),
        (evt.EVT_ABORTED, _discard_partial),
        (evt.EVT_CONN_CLOSE, _discard_partial),
        (evt.EVT_CONN_CLOSE, _count_pdu_refusal, [metrics]),
    ]
    if on_connection_end is not None:
        handlers.append((evt.EVT_CONN_CLOSE, lambda _event: on_connection_end()))
    peers = PeerConnections(settings.scp_max_associations_per_peer)
    bind_host = settings.scp_host if host is None else host
    plain = _serve(
        ae,
        handlers,
        (bind_host, settings.scp_port if port is None else port),
        "RTOPS_SCP_PORT",
    )
    limit_per_peer(plain, settings, metrics, peers)
    listeners = Listeners(plain)
    if ssl_context is not None and tls_port is not None:
        try:
            listeners.tls = _serve(
                ae,
                handlers,
                (bind_host, tls_port),
                "RTOPS_SCP_TLS_PORT",
                ssl_context=ssl_context,
            )
        except Exception:
            plain.shutdown()
            raise
        listeners.tls.handshake_timeout_s = settings.scp_association_request_timeout_s
        listeners.tls.on_handshake_failure = _handshake_failed(metrics)
        limit_per_peer(listeners.tls, settings, metrics, peers)
    for server in listeners.servers:
        server.dispatch = dispatch
        server.on_connection_end = on_connection_end
    log.info(
        "DICOM SCP listening",
        ae_title=settings.scp_ae_title,
        address=list(plain.server_address),
        tls_address=list(listeners.tls.server_address) if listeners.tls else None,
        devices=sorted(registry.devices),
        pid=os.getpid(),
    )
    return listeners


def _serve(
    ae: AE,
    handlers: list[Any],
    address: tuple[str, int],
    setting: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> DicomServer:
    """``AE.start_server(block=False)`` with our server class."""
    try:
        server = ae.make_server(
            address, evt_handlers=handlers, ssl_context=ssl_context, server_class=DicomServer
        )
    except OSError as exc:
        raise explain_bind_error(exc, *address, setting) from None
    thread = threading.Thread(
        target=make_target(server.serve_forever), name=f"AcceptorServer@{address[1]}", daemon=True
    )
    thread.start()
    ae._servers.append(server)  # what start_server does: AE.shutdown() stops it too
    return cast(DicomServer, server)


def _handshake_failed(metrics: ScpMetrics) -> Any:
    def record(client_address: Any, reason: str) -> None:
        peer = f"{client_address[0]}:{client_address[1]}"
        metrics.rejections.labels("tls_handshake_failed").inc()
        metrics.problems.record(
            Problem(
                kind="association",
                reason="tls_handshake_failed",
                calling_ae="",  # refused before its A-ASSOCIATE-RQ: no AE title yet
                peer=peer,
                detail=f"TLS handshake failed: {reason} (a client needs a certificate signed "
                "by a CA in RTOPS_SCP_TLS_CLIENT_CA)",
            )
        )
        log.warning(
            f"refused a TLS connection from {peer}: {reason}",
            reason="tls_handshake_failed",
            peer=peer,
        )

    return record


_PEERS_KEPT = 1024


class PeerConnections:
    """Open connections per peer IP address, counted from their sockets (a socket pynetdicom
    closed no longer counts), so a missed close event cannot lock a peer out for good."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()

    def admit(self, ip: str, sock: socket.socket) -> bool:
        with self._lock:
            alive = [s for s in self._open.get(ip, []) if s.fileno() != -1]
            if len(alive) >= self.limit:
                self._open[ip] = alive
                return False
            self._open[ip] = [*alive, sock]
            if len(self._open) > _PEERS_KEPT:  # forget addresses with nothing open
                self._open = {
                    k: v for k, v in self._open.items() if any(s.fileno() != -1 for s in v)
                }
            return True


def limit_per_peer(
    server: ThreadedAssociationServer,
    settings: ScpSettings,
    metrics: ScpMetrics,
    peers: PeerConnections | None = None,
) -> None:
    """Close a connection at once (before it gets a thread or an association slot) when its
    peer address already holds ``scp_max_associations_per_peer`` connections: sixteen silent
    sockets from one host otherwise took every slot from every device. ``peers``: the
    counts to share with another port's server (the plain and TLS ports count together)."""
    peers = peers or PeerConnections(settings.scp_max_associations_per_peer)

    def verify_request(request: Any, client_address: Any) -> bool:
        ip = str(client_address[0])
        if peers.admit(ip, request):
            return True
        metrics.rejections.labels("too_many_connections_from_peer").inc()
        metrics.problems.record(
            Problem(
                kind="association",
                reason="too_many_connections_from_peer",
                calling_ae="",  # closed before its A-ASSOCIATE-RQ: no AE title yet
                peer=f"{ip}:{client_address[1]}",
                detail=f"{ip} already has {peers.limit} connections open "
                "(RTOPS_SCP_MAX_ASSOCIATIONS_PER_PEER)",
            )
        )
        log.warning(
            f"closed a connection from {ip}: it already has {peers.limit} connections open "
            "(RTOPS_SCP_MAX_ASSOCIATIONS_PER_PEER)",
            reason="too_many_connections_from_peer",
            peer=f"{ip}:{client_address[1]}",
        )
        return False

    # socketserver asks this before handing the socket to a thread; False closes it.
    server.verify_request = verify_request  # type: ignore[method-assign]


def _discard_partial(event: Event) -> None:
    store_assembly.discard_partial(event.assoc)


def _count_pdu_refusal(event: Event, metrics: ScpMetrics) -> None:
    """A PDU longer than we advertised was refused (pdu_reader logged it): count it and put
    it on the problems page, once per connection."""
    detail = pdu_reader.refusal(event.assoc.dul)
    if detail is None:
        return
    metrics.rejections.labels("pdu_too_long").inc()
    metrics.problems.record(
        Problem(
            kind="association",
            reason="pdu_too_long",
            calling_ae=str(event.assoc.requestor.ae_title or "").strip(),
            peer=_peer(event),
            detail=detail,
        )
    )


def _no_delay(event: Event) -> None:
    # Without TCP_NODELAY every small C-STORE response waits ~40 ms on Nagle + delayed ACK.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def _log_rejection(
    event: Event, settings: ScpSettings, registry: DeviceRegistry, metrics: ScpMetrics
) -> None:
    """One line per refused association, with the reason pynetdicom sent (it checks the
    called AE title last, so that one wins) and every other problem of the request."""
    rq: Any = event.assoc.requestor.primitive
    calling = str(rq.calling_ae_title).strip()
    called = str(rq.called_ae_title).strip()
    devices = registry.devices
    problems: list[str] = []
    if called != settings.scp_ae_title:
        reason = "wrong_called_ae"
        near = called.upper() == settings.scp_ae_title.upper()
        hint = (
            f" (did you mean {settings.scp_ae_title}? AE titles are case-sensitive)" if near else ""
        )
        problems.append(
            f"it called AE title {called!r}, but this SCP is {settings.scp_ae_title!r}{hint}; "
            f"set the called AE title (echoscu/storescu: -aec {settings.scp_ae_title})"
        )
    if calling not in devices:
        reason = "unknown_calling_ae" if not problems else reason
        near = registry.case_hint(calling)
        hint = f"; did you mean {near}? AE titles are case-sensitive" if near else ""
        problems.append(
            f"its AE title {calling!r} is not in the device registry "
            f"({settings.scp_device_registry.name}, RTOPS_SCP_DEVICE_REGISTRY){hint}"
        )
    if not problems:
        reason = "too_many_associations"
        problems.append(
            f"too many associations at once (RTOPS_SCP_MAX_ASSOCIATIONS="
            f"{settings.scp_max_associations})"
        )
    metrics.rejections.labels(reason).inc()
    metrics.problems.record(
        Problem(
            kind="association",
            reason=reason,
            calling_ae=calling,
            called_ae=called,
            peer=_peer(event),
            detail="; and ".join(problems),
        )
    )
    log.warning(
        f"refused an association from {calling!r} at {_peer(event)}: " + "; and ".join(problems),
        reason=reason,
        calling_ae=calling,
        called_ae=called,
        peer=_peer(event),
    )


def _log_acceptance(event: Event, registry: DeviceRegistry, metrics: ScpMetrics) -> None:
    """One line per accepted association; contexts refused (a SOP class rtops does not keep,
    or no transfer syntax in common) are named and counted by their reason, once per SOP
    class and association (a sender may propose one class in several contexts)."""
    assoc: Any = event.assoc
    calling = str(assoc.requestor.ae_title).strip()
    device = registry.devices.get(calling)
    accepted = assoc.accepted_contexts
    refused: dict[str, list[str]] = {}
    for cx in assoc.rejected_contexts:
        # PS3.8 9.3.3.2: 3 = abstract syntax not supported, 4 = transfer syntaxes not supported
        reason = {3: "sop_class_not_supported", 4: "transfer_syntax_not_supported"}.get(
            cx.result, "presentation_context_refused"
        )
        uid = str(cx.abstract_syntax)
        name = sop.NAMES.get(uid) or getattr(UID(uid), "name", uid) or uid
        if name not in refused.setdefault(reason, []):
            refused[reason].append(name)
            metrics.rejections.labels(reason).inc()  # once per SOP class and association
    fields: dict[str, Any] = {
        "calling_ae": calling,
        "role": device.role if device else None,
        "machine": device.machine if device else None,
        "peer": _peer(event),
        "accepted_contexts": len(accepted),
        "pid": os.getpid(),  # which SCP process serves it (several share the port)
    }
    if refused:
        fields["refused_contexts"] = {k: sorted(set(v)) for k, v in refused.items()}
        for reason, names in fields["refused_contexts"].items():
            metrics.problems.record(
                Problem(
                    kind="context",
                    reason=reason,
                    calling_ae=calling,
                    peer=_peer(event),
                    detail=f"presentation contexts refused ({reason.replace('_', ' ')}): "
                    + _first_of(names),
                )
            )
    if not accepted:
        log.warning(
            f"accepted an association from {calling!r} but refused every presentation context "
            "it proposed: rtops does not keep these SOP classes (or shares no transfer syntax)",
            **fields,
        )
    elif refused:
        log.info(
            "association accepted; some presentation contexts refused (SOP classes rtops does "
            "not keep are not stored)",
            **fields,
        )
    else:
        log.info("association accepted", **fields)


def handle_echo(event: Event, registry: DeviceRegistry) -> int:
    calling = str(event.assoc.requestor.ae_title).strip()
    device = registry.devices.get(calling)
    log.info(
        "C-ECHO answered",
        calling_ae=calling,
        role=device.role if device else None,
        machine=device.machine if device else None,
        peer=_peer(event),
    )
    return 0x0000


class TouchedSeries:
    """The image series each open association stored an instance of."""

    def __init__(self) -> None:
        self._series: dict[Any, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, assoc: Any, series_uid: str) -> None:
        with self._lock:
            self._series.setdefault(assoc, set()).add(series_uid)

    def pop(self, assoc: Any) -> set[str]:
        with self._lock:
            return self._series.pop(assoc, set())

    def forget(self, event: Event) -> None:
        self.pop(event.assoc)


def publish_on_release(event: Event, ingestor: Ingestor, touched: TouchedSeries) -> None:
    """Publish the series this association delivered, as soon as it is released (pynetdicom
    has sent the A-RELEASE-RP by now, so the sender is not kept waiting). Consoles send a
    whole CBCT over one association: its release is the end of the series."""
    after_answer.done(event.assoc)  # done already, after the last response was sent
    series = touched.pop(event.assoc)
    if not series:
        return
    try:
        published = ingestor.publish_series(series)
    except Exception:  # the quiet-window sweep publishes them instead
        log.exception("could not publish the series of a released association", series=len(series))
        return
    log.info("series published at association release", series=len(series), published=published)


def handle_store(
    event: Event,
    ingestor: Ingestor,
    registry: DeviceRegistry,
    metrics: ScpMetrics,
    touched: TouchedSeries | None = None,
) -> int:
    request: Any = event.request
    sop_class = str(request.AffectedSOPClassUID)
    calling = str(event.assoc.requestor.ae_title).strip()
    device = registry.devices.get(calling)
    if sop_class not in sop.STORAGE:
        metrics.rejections.labels("sop_class_not_supported").inc()
        metrics.problems.record(
            Problem(
                kind="store",
                reason="sop_class_not_supported",
                calling_ae=calling,
                status=Status.SOP_CLASS_NOT_SUPPORTED,
                sop_class=sop_class,
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                peer=_peer(event),
                detail="rtops does not keep this SOP class",
            )
        )
        log.warning(
            "C-STORE refused: rtops does not keep this SOP class",
            sop_class=sop_class,
            calling_ae=calling,
        )
        return Status.SOP_CLASS_NOT_SUPPORTED
    if device is None:
        # Removed from the registry (reloaded) after its association was accepted.
        metrics.rejections.labels("unknown_calling_ae").inc()
        metrics.problems.record(
            Problem(
                kind="store",
                reason="unknown_calling_ae",
                calling_ae=calling,
                status=NOT_AUTHORIZED,
                sop_class=sop.NAMES.get(sop_class, sop_class),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                peer=_peer(event),
                detail=f"{calling!r} was removed from the device registry during its association",
            )
        )
        log.warning(
            f"C-STORE refused: {calling!r} was removed from the device registry during its "
            "association",
            calling_ae=calling,
        )
        return NOT_AUTHORIZED
    # The previous object's row, if its response was never sent (after_answer): a re-send of
    # that object must find it.
    after_answer.done(event.assoc)
    path = Path(event.dataset_path)
    try:
        return _ingest(event, path, sop_class, calling, device, ingestor, metrics, touched)
    finally:
        # Whatever happened (pynetdicom only removes it when the handler returns): a stored
        # file was moved away already, anything else goes.
        path.unlink(missing_ok=True)


def _ingest(
    event: Event,
    path: Path,
    sop_class: str,
    calling: str,
    device: Any,
    ingestor: Ingestor,
    metrics: ScpMetrics,
    touched: TouchedSeries | None,
) -> int:
    start_t = time.perf_counter()
    request: Any = event.request
    uid = str(request.AffectedSOPInstanceUID)
    source = device.as_source()
    content = receive.content_of(request)
    # The file's flushes wait on the disk while this thread reads its header.
    flushing = ingestor.store.flush_ahead(
        path,
        content[0] if content else None,
        sop_instance_uid=uid,
        calling_ae=source.ae_title,
        background=connections.alone(),
    )
    outcome = ingestor.ingest(
        path,
        sop_class_uid=sop_class,
        sop_instance_uid=uid,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        source=source,
        content=content,
        flushing=flushing,
        later=partial(after_answer.later, event.assoc),
    )
    if content is not None and outcome.status != Status.SUCCESS:
        ingestor.withdraw(flushing, content[0])  # refused or failed: no .recent name for it
    name = sop.NAMES.get(sop_class, sop_class)
    if outcome.status == Status.SUCCESS and outcome.series_instance_uid and touched is not None:
        touched.add(event.assoc, outcome.series_instance_uid)
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
        reason = _REJECTION_REASONS.get(outcome.status, outcome.status.name.lower())
        metrics.rejections.labels(reason).inc()
        metrics.problems.record(
            Problem(
                kind="store",
                reason=reason,
                calling_ae=calling,
                status=outcome.status,
                sop_class=name,
                sop_instance_uid=outcome.sop_instance_uid or None,
                peer=_peer(event),
                detail=outcome.reason,
            )
        )
        log.warning(
            "C-STORE failed",
            status=f"0x{outcome.status:04X}",
            reason=outcome.reason,
            sop_class=name,
            sop_instance_uid=outcome.sop_instance_uid,
            calling_ae=calling,
        )
    return outcome.status


def reload_on_sighup(registry: DeviceRegistry, also: Callable[[], None] | None = None) -> None:
    """``kill -HUP <pid>`` reloads the registry at once (in the main thread's event loop; an
    app served from another thread, as in tests, relies on the file-change check). ``also``:
    what else a SIGHUP does (forward it to the other SCP processes)."""

    def reload() -> None:
        threading.Thread(target=registry.reload, args=("SIGHUP",)).start()
        if also is not None:
            also()

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        return


def _first_of(names: list[str], shown: int = 5) -> str:
    """A few names and a count: a device proposing every class it knows would otherwise fill
    the problems page with a hundred names per association (the log keeps them all)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
