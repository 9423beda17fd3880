"""The JetStream client every service uses: connect, ensure the stream, publish with an id,
and a durable pull-consumer loop with explicit ack / nak with backoff / term to a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared import natsauth
from shared.errors import Poison as Poison  # re-exported: handlers raise it
from shared.errors import TransientError, is_permanent
from shared.events import SUBJECT_PREFIX, CloudEvent, parse_event
from shared.settings import RtopsSettings

log = structlog.get_logger(__name__)


def subject_for(settings: RtopsSettings, event_type: str) -> str:
    """The NATS subject of an event type under the configured prefix."""
    return settings.subject_prefix + event_type.removeprefix(SUBJECT_PREFIX)


def connect_options(settings: RtopsSettings, user: str) -> dict[str, object]:
    """nats-py's ``connect`` options for ``settings``' credentials and TLS: user and password
    when set, TLS when a CA or client certificate is named, and replies on the user's own inbox
    prefix (the embedded server lets a user subscribe to its own inbox only)."""
    options: dict[str, object] = {"inbox_prefix": natsauth.inbox_prefix(settings.nats_user or user)}
    if settings.nats_user:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_tls_ca or settings.nats_tls_cert:
        options["tls"] = tls_context(settings)
    return options


def tls_context(settings: RtopsSettings) -> ssl.SSLContext:
    """A client TLS context: the server's certificate checked against ``nats_tls_ca`` (else the
    system's CAs) and its host name; a client certificate when the server verifies clients."""
    context = ssl.create_default_context(
        cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
    )
    if settings.nats_tls_cert:
        key = settings.nats_tls_key
        context.load_cert_chain(str(settings.nats_tls_cert), str(key) if key else None)
    return context


async def connect(url: str, *, name: str, connect_timeout: float = 5.0, **options: object) -> NATS:
    """Connect and keep reconnecting forever; outages are logged, not fatal. ``options``: more
    of nats-py's ``connect`` arguments (``connect_options``: credentials, TLS, inbox prefix)."""
    client = NATS()

    async def on_disconnect() -> None:
        # Our own drain or close disconnects too: that is no outage.
        if client.is_closed or client.is_draining:
            log.debug("nats connection closed", url=url)
        else:
            log.warning("nats disconnected; reconnecting", url=url)

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=url)

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    await client.connect(
        servers=[url],
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1.0,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        **options,  # type: ignore[arg-type]
    )
    return client


async def ensure_stream(js: JetStreamContext, settings: RtopsSettings) -> None:
    config = StreamConfig(
        name=settings.stream_name,
        subjects=[f"{settings.subject_prefix}.>"],
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
    )
    try:
        await js.stream_info(settings.stream_name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream created", stream=settings.stream_name)
    else:
        await js.update_stream(config)


class StreamMissing(RuntimeError):
    """The stream does not exist and this user may not create it."""


async def check_stream(js: JetStreamContext, settings: RtopsSettings) -> None:
    """What a service with its own NATS user does instead of ``ensure_stream``: it may only look
    the stream up; the admin user creates and updates it (``rtops run``, ``rtops migrate``)."""
    try:
        await js.stream_info(settings.stream_name)
    except NotFoundError:
        raise StreamMissing(
            f"stream {settings.stream_name} does not exist and this service's NATS user may "
            "not create it: run `rtops migrate` with the admin user's credentials"
        ) from None


async def set_up_stream(settings: RtopsSettings, url: str | None = None) -> None:
    """Create or update the stream as ``settings``' NATS user (the admin: ``rtops run`` for the
    embedded server, ``rtops migrate`` for an external one), then disconnect."""
    nc = NATS()
    await nc.connect(
        servers=[url or settings.resolved_nats_url()],
        name="rtops",
        connect_timeout=5,
        allow_reconnect=False,
        **connect_options(settings, natsauth.ADMIN_USER),  # type: ignore[arg-type]
    )
    try:
        await ensure_stream(nc.jetstream(), settings)
    finally:
        await nc.close()


async def ready_stream(js: JetStreamContext, settings: RtopsSettings) -> None:
    """On an open bus (no NATS user set: CI's NATS, the tests' server) every service creates or
    updates the stream, as before credentials; with a user it only checks the stream is there."""
    if settings.nats_user:
        await check_stream(js, settings)
    else:
        await ensure_stream(js, settings)


PUBLISH_ACK_TIMEOUT_S = 5.0


async def publish(js: JetStreamContext, subject: str, body: bytes, msg_id: str) -> None:
    """Publish and wait for the stream's ack; a duplicate id is acked without a second copy."""
    ack = await js.publish(
        subject, body, timeout=PUBLISH_ACK_TIMEOUT_S, headers={"Nats-Msg-Id": msg_id}
    )
    if ack.duplicate:
        log.debug("duplicate publish dropped by stream", subject=subject, msg_id=msg_id)


class ConsumeObserver(Protocol):
    """What a consumer loop reports (``shared.consumer.ConsumerMetrics`` turns it into
    Prometheus metrics): each message's outcome, each batch's time, the backlog."""

    def settled(self, durable: str, subject: str, outcome: str) -> None: ...

    def batch(self, durable: str, size: int, seconds: float) -> None: ...

    def lag(self, durable: str, pending: int) -> None: ...


class _Unobserved:
    def settled(self, durable: str, subject: str, outcome: str) -> None:
        pass

    def batch(self, durable: str, size: int, seconds: float) -> None:
        pass

    def lag(self, durable: str, pending: int) -> None:
        pass


LAG_INTERVAL_S = 10.0
Handler = Callable[[CloudEvent], Awaitable[None]]
# Applies a fetched batch all or nothing: one transaction instead of one per event.
BatchHandler = Callable[[list[CloudEvent]], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerPolicy:
    max_deliver: int = 6
    backoff_s: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0, 300.0)
    ack_wait_s: float = 60.0
    batch: int = 50
    fetch_timeout_s: float = 1.0
    stream: str = "RTOPS"


async def consume(
    js: JetStreamContext,
    *,
    durable: str,
    filter_subjects: Sequence[str],
    handler: Handler,
    batch_handler: BatchHandler | None = None,
    policy: ConsumerPolicy | None = None,
    stop: asyncio.Event | None = None,
    dead_letter_prefix: str = f"{SUBJECT_PREFIX}.deadletter",
    observer: ConsumeObserver | None = None,
) -> None:
    """Run a durable pull consumer on ``filter_subjects`` until ``stop`` is set (or the task
    is cancelled).

    Outcomes: handler returns -> ack; a permanent error (``shared.errors.is_permanent``:
    unparseable, ``Poison``, ``RuleViolation``) -> dead letter + term at once; any other
    exception -> nak with backoff, and dead letter + term once ``max_deliver`` deliveries are
    used up. Replicas sharing ``durable`` share the work.

    Several subjects share one durable (``filter_subjects``, NATS 2.10+). An older server
    takes one filter per consumer: there each subject gets a durable of its own
    (``<durable>_<hash of the subject>``), run side by side; the handlers are idempotent
    and order-independent, so only the consumers' names differ.

    With a ``batch_handler``, each fetched batch goes to it first and is acked when it
    returns; if it raises (or an event does not parse), the batch's messages take the
    one-by-one path above, so one bad event never holds up the others.
    """
    policy = policy or ConsumerPolicy()
    stop = stop or asyncio.Event()
    subjects = list(dict.fromkeys(filter_subjects))
    if not subjects:
        raise ValueError("a consumer needs at least one filter subject")
    if len(subjects) > 1 and not _multi_filter(js):
        await asyncio.gather(
            *(
                consume(
                    js,
                    durable=natsauth.legacy_durable(durable, subject),
                    filter_subjects=[subject],
                    handler=handler,
                    batch_handler=batch_handler,
                    policy=policy,
                    stop=stop,
                    dead_letter_prefix=dead_letter_prefix,
                    observer=observer,
                )
                for subject in subjects
            )
        )
        return
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=policy.max_deliver,
        ack_wait=policy.ack_wait_s,
    )
    if len(subjects) == 1:
        config.filter_subject = subjects[0]
    else:
        config.filter_subjects = subjects
    await js.add_consumer(policy.stream, config)
    sub = await js.pull_subscribe_bind(durable=durable, stream=policy.stream)
    seen = observer or _Unobserved()
    lag_due = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() >= lag_due:
                lag_due = time.monotonic() + LAG_INTERVAL_S
                with contextlib.suppress(Exception):  # the backlog is a gauge: skip a round
                    seen.lag(durable, (await sub.consumer_info()).num_pending)
            try:
                msgs = await sub.fetch(policy.batch, timeout=policy.fetch_timeout_s)
            except (NatsTimeoutError, TimeoutError):  # idle: nothing to fetch
                continue
            except Exception as exc:  # broker restarting: the client reconnects by itself
                log.warning("fetch failed; retrying", durable=durable, error=str(exc) or repr(exc))
                await asyncio.sleep(policy.fetch_timeout_s)
                continue
            started = time.perf_counter()
            if batch_handler is not None and await _apply_batch(msgs, batch_handler, durable):
                seen.batch(durable, len(msgs), time.perf_counter() - started)
                for msg in msgs:
                    seen.settled(durable, _event_subject(msg.subject), "applied")
                continue
            for msg in msgs:
                try:
                    outcome = await handle_message(
                        js,
                        msg,
                        durable=durable,
                        handler=handler,
                        policy=policy,
                        dead_letter_prefix=dead_letter_prefix,
                    )
                    seen.settled(durable, _event_subject(msg.subject), _OUTCOMES[outcome])
                except Exception as exc:  # ack/nak/dead letter failed: redelivered after ack_wait
                    log.warning(
                        "could not settle message; it will be redelivered",
                        durable=durable,
                        subject=msg.subject,
                        error=str(exc),
                    )
    finally:
        # An open pull subscription leaves status messages queued that make drain() wait
        # for its whole timeout at shutdown.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


_OUTCOMES = {"ack": "applied", "nak": "retried", "term": "dead_lettered"}


def _event_subject(subject: str) -> str:
    """The subject without the suite's prefix: one label value per event type."""
    return subject.split(".", 1)[-1]


def _multi_filter(js: JetStreamContext) -> bool:
    """Whether the server takes several filter subjects on one consumer (NATS 2.10+)."""
    version = js._nc.connected_server_version
    return (version.major, version.minor) >= (2, 10)


async def _apply_batch(msgs: list[Msg], batch_handler: BatchHandler, durable: str) -> bool:
    """True when the batch was applied and acked; False leaves it to the one-by-one path."""
    try:
        await batch_handler([parse_event(msg.data) for msg in msgs])
    except Exception as exc:
        log.info(
            "batch not applied; handling its events one by one",
            durable=durable,
            size=len(msgs),
            error=str(exc),
        )
        return False
    for msg in msgs:
        try:
            await msg.ack()
        except Exception as exc:  # redelivered after ack_wait; the handlers are idempotent
            log.warning("could not ack; it will be redelivered", durable=durable, error=str(exc))
    return True


async def handle_message(
    js: JetStreamContext,
    msg: Msg,
    *,
    durable: str,
    handler: Handler,
    policy: ConsumerPolicy,
    dead_letter_prefix: str = f"{SUBJECT_PREFIX}.deadletter",
) -> str:
    """Apply the ack policy to one message; returns what was done (for tests and metrics)."""
    delivered = msg.metadata.num_delivered
    try:
        event = parse_event(msg.data)
        await handler(event)
    except Exception as exc:
        if is_permanent(exc):
            await _dead_letter(js, msg, durable, dead_letter_prefix, reason=str(exc))
            return "term"
        if delivered >= policy.max_deliver:
            await _dead_letter(
                js, msg, durable, dead_letter_prefix, reason=f"gave up after {delivered}: {exc}"
            )
            return "term"
        delay = policy.backoff_s[min(delivered - 1, len(policy.backoff_s) - 1)]
        transient = isinstance(exc, TransientError)
        (log.info if transient else log.warning)(
            "handler failed; redelivering",
            durable=durable,
            subject=msg.subject,
            delivered=delivered,
            delay_s=delay,
            error=str(exc),
            # Anything but a known transient condition is a bug in rtops: keep its traceback.
            exc_info=not transient,
        )
        await msg.nak(delay=delay)
        return "nak"
    await msg.ack()
    return "ack"


async def _dead_letter(
    js: JetStreamContext, msg: Msg, durable: str, prefix: str, *, reason: str
) -> None:
    log.error(
        "event dead-lettered",
        durable=durable,
        subject=msg.subject,
        reason=reason,
        stream_seq=msg.metadata.sequence.stream,
    )
    headers = {
        "Rtops-Dead-Letter-Reason": reason[:1000],
        "Rtops-Original-Subject": msg.subject,
        "Rtops-Original-Sequence": str(msg.metadata.sequence.stream),
        "Nats-Msg-Id": f"dl:{durable}:{msg.metadata.sequence.stream}",
    }
    await js.publish(f"{prefix}.{durable}", msg.data, headers=headers)
    await msg.term()


class NatsLink:
    """A connection that a service keeps up in the background: startup does not wait for NATS,
    and while it is away ``publish`` raises so that the outbox keeps its rows."""

    def __init__(self, settings: RtopsSettings, *, name: str) -> None:
        self._settings = settings
        self._name = name
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected and self.js is not None

    async def run(self) -> None:
        url = self._settings.resolved_nats_url()
        delay = 0.5
        while self.nc is None:
            try:
                nc = await connect(
                    url, name=self._name, **connect_options(self._settings, self._name)
                )
                js = nc.jetstream()
                try:
                    await ready_stream(js, self._settings)
                except Exception:
                    await nc.close()
                    raise
            except Exception as exc:
                log.warning(
                    "NATS not reachable yet; retrying", url=url, error=str(exc), retry_in_s=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.nc, self.js = nc, js
            self.ready.set()
            log.info("connected to NATS", url=url)

    async def check(self) -> None:
        if not self.connected:
            raise ConnectionError("not connected to NATS")

    async def publish(self, event_type: str, body: bytes, msg_id: str) -> None:
        """Publish under the configured prefix (the outbox stores event types as subjects)."""
        await self.check()
        assert self.js is not None
        try:
            await publish(self.js, subject_for(self._settings, event_type), body, msg_id)
        except NoRespondersError:
            # The stream is gone (a wiped server): recreate it where this user may (the admin
            # does it otherwise); the outbox retries the row.
            await ready_stream(self.js, self._settings)
            raise

    async def consume(
        self,
        *,
        durable: str,
        event_filters: Sequence[str],
        handler: Handler,
        batch_handler: BatchHandler | None = None,
        policy: ConsumerPolicy | None = None,
        stop: asyncio.Event | None = None,
        observer: ConsumeObserver | None = None,
    ) -> None:
        """The consumer loop of ``consume`` on this link once connected; ``event_filters`` are
        event-type patterns such as ``rtops.dicom.>`` (put under the configured prefix)."""
        await self.ready.wait()
        assert self.js is not None
        policy = dataclasses.replace(policy or ConsumerPolicy(), stream=self._settings.stream_name)
        await consume(
            self.js,
            durable=durable,
            filter_subjects=[subject_for(self._settings, f) for f in event_filters],
            handler=handler,
            batch_handler=batch_handler,
            policy=policy,
            stop=stop,
            dead_letter_prefix=subject_for(self._settings, "rtops.deadletter"),
            observer=observer,
        )

    async def close(self) -> None:
        if self.nc is None or self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception:  # reconnecting or already gone: nothing left to flush
            await self.nc.close()
