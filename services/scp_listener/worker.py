"""``python -m services.scp_listener.worker``: one extra SCP process, started by the parent's
``WorkerPool`` (services/scp_listener/processes.py), never by hand. It serves the connections
the parent accepted on the DICOM port(s) and passed to it, and stores what it receives into the
same database and object store; the parent's relay publishes the events.

Its settings arrive as JSON on stdin (the parent's, whatever their source); its arguments say
which worker it is, whether the parent has a TLS port, and the inherited sockets to the parent
(its messages) and from it (the connections).
"""

from __future__ import annotations

from services.scp_listener.lean import keep_lean

SERVICE = "scp_listener"  # the database (schema) is the SCP's, as app.SERVICE names it


def main(argv: list[str] | None = None) -> None:
    keep_lean()  # before anything imports pydicom
    import os
    import signal

    from shared.natsd import die_with_parent

    # SIGTERM from the kernel when the parent's thread that started this one ends (the parent
    # dies, however): asked here rather than in a preexec_fn, which is unsafe in the parent.
    die_with_parent()
    # A SIGHUP forwarded while this process starts must not end it (the default action): the
    # registry it loads below is the file as it is then.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import argparse
    import sys
    import threading
    from typing import Any

    import structlog
    from prometheus_client import CollectorRegistry

    from services.scp_listener import scp, tls
    from services.scp_listener.content_locks import shared_locks
    from services.scp_listener.cpu_pinning import pin_to
    from services.scp_listener.devices import DeviceRegistry
    from services.scp_listener.metrics import ScpMetrics
    from services.scp_listener.objectstore import ObjectStore
    from services.scp_listener.processes import (
        ParentLink,
        receive_connections,
        settings_from_json,
        wait_for_associations,
    )
    from services.scp_listener.service import LOCK_STRIPES, Ingestor
    from services.scp_listener.store import Outbox
    from shared.collector import tune_collector
    from shared.db import make_engine, make_relaxed_engine, session_factory
    from shared.logging import configure_logging
    from shared.outbox import outbox_info
    from shared.settings import SettingError

    parser = argparse.ArgumentParser(prog="python -m services.scp_listener.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--tls", action="store_true", help="the parent has a TLS port")
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--connections-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the parent's pid")
    parser.add_argument("--cpu", type=int, help="the CPU to run on (cpu_pinning.py)")
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:  # it died before the death signal was asked for
        raise SystemExit(1)

    settings = settings_from_json(sys.stdin.buffer.read())
    configure_logging(settings.log_level, settings.log_format, service=SERVICE)
    log = structlog.get_logger("services.scp_listener.worker").bind(worker=args.index)
    # Before this process starts a thread: the threads it starts keep its CPU.
    if args.cpu is not None and (refused := pin_to(args.cpu)):
        log.warning(refused)
    # The parent stops its workers with SIGTERM; a Ctrl-C in a terminal reaches the parent,
    # which then stops them after its own ports closed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    # set() from another thread: the handler runs in this (main) thread, possibly while it
    # holds the event's own lock inside stop.wait(), and set() would then wait for it forever.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set).start())

    link = ParentLink(args.link_fd)
    engine = make_engine(settings, SERVICE)
    image_engine = make_relaxed_engine(settings, SERVICE)
    ingestor = Ingestor(
        factory=session_factory(engine, **outbox_info(Outbox, SERVICE)),
        image_engine=image_engine,
        store=ObjectStore(settings.object_store()),
        clinic_tz=settings.clinic_timezone,
        on_commit=link.wake,
        max_sequence_depth=settings.scp_max_sequence_depth,
        locks=shared_locks(settings.object_store(), LOCK_STRIPES),
    )
    try:
        registry = DeviceRegistry(settings.scp_device_registry)
        context = tls.server_context(settings) if args.tls else None
        # Its servers take the connections the parent passes; their own listening sockets
        # are on a loopback port nobody is told of.
        listeners = scp.listen(
            settings,
            registry,
            ingestor,
            ScpMetrics(CollectorRegistry(), problems=link),
            host="127.0.0.1",
            port=0,
            tls_port=0 if args.tls else None,
            ssl_context=context,
            on_connection_end=lambda: link.ended(args.index),
            spool=settings.spool_dir() / f"w{args.index}",
        )
    except SettingError as exc:
        log.error(f"SCP worker cannot start: {exc}")
        raise SystemExit(2) from None

    def serve(sock: Any, peer: tuple[str, int], is_tls: bool) -> None:
        server = listeners.tls if is_tls else listeners.plain
        if server is None:  # cannot happen: the parent passes TLS only with --tls
            sock.close()
            return
        if server.ssl_context is not None:
            sock = server.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        server.process_request(sock, peer)

    receive_connections(args.connections_fd, serve)
    link.ready(args.index)
    signal.signal(
        signal.SIGHUP,
        lambda *_: threading.Thread(target=registry.reload, args=("SIGHUP",)).start(),
    )
    tune_collector()
    while not stop.wait(settings.scp_device_registry_poll_s):
        try:
            registry.reload_if_changed()
        except Exception:  # the next round tries again, as the parent's periodic task does
            log.exception("device registry reload failed")
    listeners.shutdown()
    wait_for_associations(listeners)
    engine.dispose()
    image_engine.dispose()
    log.info("SCP worker stopped")


if __name__ == "__main__":
    main()
