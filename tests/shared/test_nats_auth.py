"""Per-service NATS credentials (shared/natsauth.py, docs/security_nats.md) on the embedded
server with the configuration ``rtops run`` generates: who may connect, publish and read.

One server per module (and per xdist worker), in a tmp dir on a free port, with the suite's
default stream and prefix, which the generated permissions name.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from pydantic import SecretStr

from shared import natsauth
from shared.events import SUBJECT_PREFIX, CloudEvent
from shared.events.registry import _BY_TYPE
from shared.jetstream import ConsumerPolicy, NatsLink, Poison, ensure_stream
from shared.natsd import EmbeddedNats, server_binary
from shared.settings import RtopsSettings
from tests.events import imaging_event, record_event
from tests.shared.test_jetstream import FAST, eventually

STREAM = "RTOPS"
# Long enough for a publish ack on a loaded machine, short enough for the refused ones.
REFUSED_WITHIN_S = 1.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    nats_dir = tmp_path_factory.mktemp("secured") / "nats"
    config, passwords = natsauth.write_server_config(
        nats_dir, stream=STREAM, subject_prefix=SUBJECT_PREFIX
    )
    server = EmbeddedNats(nats_dir, port=0, config=config).start()
    try:
        yield {"server": server, "dir": nats_dir, "passwords": passwords}
    finally:
        server.stop()


def settings_of(secured: dict[str, Any], user: str, tmp_path: Path) -> RtopsSettings:
    return RtopsSettings(
        var_dir=tmp_path / "var",
        nats_url=secured["server"].url,
        nats_user=user,
        nats_password=secured["passwords"][user],
        log_format="console",
    )


class Violations:
    """nats-py reports a permissions violation to the error callback only: collect them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())

    async def wait(self, words: str) -> None:
        await eventually(
            lambda: any(words.lower() in s for s in self.seen),
            within=5,
            message=f"error {words!r}",
        )


async def connect_as(secured: dict[str, Any], user: str, violations: Violations) -> NATS:
    return await nats.connect(
        secured["server"].url,
        user=user,
        password=secured["passwords"][user],
        inbox_prefix=natsauth.inbox_prefix(user),
        error_cb=violations.record,
        allow_reconnect=False,
        connect_timeout=5,
    )


@pytest.fixture
async def admin(secured: dict[str, Any], tmp_path: Path) -> AsyncIterator[NATS]:
    """The admin user, with the stream created (its job, as at ``rtops run``)."""
    nc = await connect_as(secured, natsauth.ADMIN_USER, Violations())
    await ensure_stream(nc.jetstream(), settings_of(secured, natsauth.ADMIN_USER, tmp_path))
    yield nc
    await nc.close()


@contextlib.asynccontextmanager
async def linked(settings: RtopsSettings, name: str) -> AsyncIterator[NatsLink]:
    link = NatsLink(settings, name=name)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.ready.wait(), 15)
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if link.nc is not None:
            await link.nc.close()


async def stored(admin: NATS, subject: str) -> list[bytes]:
    """Every message the stream holds on ``subject``, read by the admin."""
    jsm = admin.jetstream()
    info = await jsm.stream_info(STREAM, subjects_filter=subject)
    if not info.state.subjects:
        return []
    sub = await jsm.subscribe(subject, ordered_consumer=True)
    count = sum(info.state.subjects.values())
    msgs = [await sub.next_msg(timeout=5) for _ in range(count)]
    await sub.unsubscribe()
    return [m.data for m in msgs]


async def test_an_anonymous_client_or_a_wrong_password_is_refused(
    secured: dict[str, Any],
) -> None:
    url = secured["server"].url
    for credentials in ({}, {"user": "qa_tracker", "password": "not-the-password"}):
        with pytest.raises(NatsError, match=r"(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=5, **credentials)


async def test_the_qa_tracker_cannot_forge_a_treatment_record(
    secured: dict[str, Any], admin: NATS
) -> None:
    violations = Violations()
    qa = await connect_as(secured, "qa_tracker", violations)
    try:
        forged = record_event(1, "2026-01-05", pid="FORGED-1").to_json()
        with pytest.raises((TimeoutError, NatsError)):
            await qa.jetstream().publish(
                "rtops.dicom.treatment.recorded", forged, timeout=REFUSED_WITHIN_S
            )
        await violations.wait('Permissions Violation for Publish to "rtops.dicom.treatment')
    finally:
        await qa.close()
    assert not [m for m in await stored(admin, "rtops.dicom.>") if b"FORGED-1" in m]


async def test_the_qa_tracker_cannot_read_what_it_does_not_consume(
    secured: dict[str, Any], admin: NATS
) -> None:
    violations = Violations()
    qa = await connect_as(secured, "qa_tracker", violations)
    js = qa.jetstream()
    try:
        # Events by plain subscription, others' replies (a pull consumer's messages arrive on
        # its inbox), and the stream itself through the JetStream API.
        await qa.subscribe("rtops.billing.>")
        await violations.wait('Permissions Violation for Subscription to "rtops.billing.>"')
        await qa.subscribe("_INBOX_billing.>")
        await violations.wait('Subscription to "_INBOX_billing.>"')
        for refused in (
            js.get_msg(STREAM, seq=1),  # direct read of any message
            js.add_consumer(STREAM, durable_name="spy"),  # a consumer of its own choosing
            js.consumer_info(STREAM, "billing"),  # another service's durable
        ):
            with pytest.raises((TimeoutError, NatsError)):
                await asyncio.wait_for(refused, REFUSED_WITHIN_S)
        await violations.wait("$JS.API.CONSUMER.INFO.RTOPS.billing")
        nxt = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.billing"
        with pytest.raises((TimeoutError, NatsError)):
            await qa.request(nxt, b'{"batch": 1}', timeout=REFUSED_WITHIN_S)
        await violations.wait(f'Publish to "{nxt}"')
    finally:
        await qa.close()


async def test_the_scp_publishes_a_treatment_record_and_the_qa_consumer_receives_it(
    secured: dict[str, Any], admin: NATS, tmp_path: Path
) -> None:
    event = record_event(1, "2026-01-05", pid="AUTH-1")
    got: list[CloudEvent] = []

    async def handler(received: CloudEvent) -> None:
        got.append(received)

    lags: list[int] = []

    class Observer:  # the backlog gauge reads the consumer's info: its user may
        def settled(self, durable: str, subject: str, outcome: str) -> None:
            pass

        def batch(self, durable: str, size: int, seconds: float) -> None:
            pass

        def lag(self, durable: str, pending: int) -> None:
            lags.append(pending)

    stop = asyncio.Event()
    async with (
        linked(settings_of(secured, "scp_listener", tmp_path), "scp_listener") as scp,
        linked(settings_of(secured, "qa_tracker", tmp_path), "qa_tracker") as qa,
    ):
        await scp.publish(event.type, event.to_json(), event.id)
        task = asyncio.create_task(
            qa.consume(
                durable="qa_tracker",
                event_filters=["rtops.dicom.>"],
                handler=handler,
                policy=ConsumerPolicy(**FAST),  # type: ignore[arg-type]
                stop=stop,
                observer=Observer(),
            )
        )
        await eventually(lambda: any(e.id == event.id for e in got), message="the record")
        await eventually(lambda: lags, message="the backlog gauge")
        stop.set()
        await asyncio.wait_for(task, 10)
    # Acked under the QA tracker's permissions: nothing left for redelivery.
    info = await admin.jetstream().consumer_info(STREAM, "qa_tracker")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_a_consumer_with_several_subjects_acks_naks_and_dead_letters_with_its_own_user(
    secured: dict[str, Any], admin: NATS, tmp_path: Path
) -> None:
    """The billing consumer (several filter subjects): ack, nak (a retry) and a dead letter on
    ``rtops.deadletter.billing`` all go through with its permissions only."""
    # Billing does not read imaging events: never delivered to it.
    imaging = imaging_event("1.2.826.0.1.99", "2026-01-05", pid="AUTH-2")
    good, poison, flaky = (record_event(n + 1, "2026-01-05", pid=f"AUTH-3{n}") for n in range(3))
    tries: dict[str, int] = {}

    async def handler(received: CloudEvent) -> None:
        tries[received.id] = tries.get(received.id, 0) + 1
        if received.id == poison.id:
            raise Poison("a test's poison")
        if received.id == flaky.id and tries[received.id] == 1:
            raise RuntimeError("once")

    stop = asyncio.Event()
    async with (
        linked(settings_of(secured, "scp_listener", tmp_path), "scp_listener") as scp,
        linked(settings_of(secured, "billing", tmp_path), "billing") as billing,
    ):
        for event in (imaging, good, poison, flaky):
            await scp.publish(event.type, event.to_json(), event.id)
        task = asyncio.create_task(
            billing.consume(
                durable="billing",
                event_filters=natsauth.GRANTS_BY_SERVICE["billing"].consumes["billing"],
                handler=handler,
                policy=ConsumerPolicy(**FAST),  # type: ignore[arg-type]
                stop=stop,
            )
        )
        await eventually(lambda: tries.get(flaky.id) == 2, message="the retried event")
        dead = await eventually(
            lambda: stored(admin, "rtops.deadletter.billing"), message="the dead letter"
        )
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [poison.id.encode() in d for d in dead] == [True]
    assert imaging.id not in tries and tries[good.id] == 1
    info = await admin.jetstream().consumer_info(STREAM, "billing")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_service_user_cannot_create_or_change_the_stream(
    secured: dict[str, Any], admin: NATS, tmp_path: Path
) -> None:
    """The admin manages the stream; a service user only looks it up, and says what to do when
    it is missing."""
    violations = Violations()
    scp = await connect_as(secured, "scp_listener", violations)
    try:
        with pytest.raises((TimeoutError, NatsError)):
            await asyncio.wait_for(
                scp.jetstream().update_stream(name=STREAM, subjects=["x.>"]), REFUSED_WITHIN_S
            )
        await violations.wait("$JS.API.STREAM.UPDATE.RTOPS")
    finally:
        await scp.close()
    assert (await admin.jetstream().stream_info(STREAM)).config.subjects == ["rtops.>"]


def test_credential_files_are_private_and_a_restart_reuses_them(
    secured: dict[str, Any], tmp_path: Path
) -> None:
    nats_dir: Path = secured["dir"]
    for name in (natsauth.USERS_FILE, natsauth.CONFIG_FILE):
        assert stat.S_IMODE((nats_dir / name).stat().st_mode) == 0o600, name
    # A second start (here: a second server on a copy of the same directory) keeps every
    # service's password, so running services reconnect with what they hold.
    again_dir = tmp_path / "nats"
    again_dir.mkdir()
    (again_dir / natsauth.USERS_FILE).write_bytes((nats_dir / natsauth.USERS_FILE).read_bytes())
    (again_dir / natsauth.USERS_FILE).chmod(0o600)
    config, passwords = natsauth.write_server_config(
        again_dir, stream=STREAM, subject_prefix=SUBJECT_PREFIX
    )
    assert passwords == secured["passwords"]
    server = EmbeddedNats(again_dir, port=0, config=config).start()
    try:

        async def as_qa() -> None:
            nc = await nats.connect(
                server.url, user="qa_tracker", password=secured["passwords"]["qa_tracker"]
            )
            await nc.close()

        asyncio.run(as_qa())
    finally:
        server.stop()


def test_passwords_are_made_once(tmp_path: Path) -> None:
    first = natsauth.load_or_create_passwords(tmp_path)
    assert natsauth.load_or_create_passwords(tmp_path) == first
    assert set(first) == {natsauth.ADMIN_USER, *natsauth.GRANTS_BY_SERVICE}
    assert len(set(first.values())) == len(first)  # one password per user


def test_the_grants_match_what_each_service_publishes_and_consumes() -> None:
    """The table in shared/natsauth.py against the services' subscriptions and the event
    types: a new subscription or event domain must get its grant, or it is refused at run time."""
    import importlib

    from services.cli import existing_services

    for service in existing_services():
        assert service in natsauth.GRANTS_BY_SERVICE, f"{service} has no NATS grant"
        grant = natsauth.GRANTS_BY_SERVICE[service]
        try:
            module = importlib.import_module(f"services.{service}.consumer")
        except ModuleNotFoundError:
            assert not grant.consumes, service
            continue
        subscription = module.SUBSCRIPTION
        assert dict(grant.consumes) == {subscription.durable: subscription.subjects}, service
    publishers = {g.publishes: g.service for g in natsauth.GRANTS if g.publishes}
    for type_, _version in _BY_TYPE:
        domain = type_.split(".")[1]
        assert domain in publishers, f"no service may publish {type_}"


def test_permissions_follow_the_configured_stream_and_prefix() -> None:
    grant = natsauth.GRANTS_BY_SERVICE["scheduler"]
    perms = natsauth.permissions(grant, stream="TRAINING", subject_prefix="train")
    publish = perms["publish"]["allow"]  # type: ignore[index]
    assert "train.scheduler.>" in publish
    assert "$JS.ACK.TRAINING.scheduler.>" in publish
    assert "train.deadletter.scheduler" in publish
    assert not any(p.startswith("rtops.") for p in publish)


def test_the_link_connects_with_the_settings_credentials_and_inbox(tmp_path: Path) -> None:
    from shared.jetstream import connect_options

    settings = RtopsSettings(var_dir=tmp_path, nats_user="billing", nats_password="pw")
    options = connect_options(settings, "billing")
    assert options == {"inbox_prefix": "_INBOX_billing", "user": "billing", "password": "pw"}
    open_bus = connect_options(RtopsSettings(var_dir=tmp_path), "billing")
    assert open_bus == {"inbox_prefix": "_INBOX_billing"}


REPO = Path(__file__).resolve().parents[2]


def test_the_production_users_file_is_generated_and_nats_server_accepts_it() -> None:
    path = REPO / "deploy" / "nats" / "rtops-users.conf"
    assert path.read_text() == natsauth.production_config(), (
        "deploy/nats/rtops-users.conf is stale: python -m shared.natsauth > it"
    )
    env = {
        f"RTOPS_NATS_PASSWORD_{user.upper()}": "x"
        for user in (natsauth.ADMIN_USER, *natsauth.GRANTS_BY_SERVICE)
    }
    out = subprocess.run(
        [server_binary(), "-c", str(path), "-t"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr


def test_each_deployment_connects_as_its_own_user_from_the_secret() -> None:
    import yaml

    manifests = {
        "scp-listener": "scp_listener",
        "qa-tracker": "qa_tracker",
        "scheduler": "scheduler",
        "documents": "documents",
        "billing": "billing",
        "migrate-job": natsauth.ADMIN_USER,
    }
    for manifest, user in manifests.items():
        docs = yaml.safe_load_all((REPO / "deploy" / "k8s" / f"{manifest}.yaml").read_text())
        workload = next(d for d in docs if d and d["kind"] in ("Deployment", "Job"))
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RTOPS_NATS_USER"]["value"] == user, manifest
        secret = env["RTOPS_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "rtops-nats", "key": user}, manifest


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (openssl)."""
    paths = {n: folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=rtops CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=nats")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    signing = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "san.ext"]
    openssl("x509", "-req", "-in", "server.csr", *signing, "-out", "server.crt", "-days", "1")
    return paths


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl makes the test certificates")
def test_a_service_reaches_nats_over_tls_with_the_ca_it_is_given(tmp_path: Path) -> None:
    """RTOPS_NATS_TLS_CA: the service checks the server's certificate against that CA (and the
    host) and connects with its user; a client without that CA is refused by its own check."""
    import json
    import ssl

    certs = make_certificates(tmp_path)
    nats_dir = tmp_path / "nats"
    config_path, passwords = natsauth.write_server_config(
        nats_dir, stream=STREAM, subject_prefix=SUBJECT_PREFIX
    )
    config = json.loads(config_path.read_text())
    config["tls"] = {"cert_file": str(certs["server.crt"]), "key_file": str(certs["server.key"])}
    config_path.write_text(json.dumps(config))
    server = EmbeddedNats(nats_dir, port=0, config=config_path).start()
    secured = {"server": server, "passwords": passwords}

    async def scenario() -> None:
        admin = settings_of(secured, natsauth.ADMIN_USER, tmp_path)
        admin = admin.model_copy(update={"nats_tls_ca": certs["ca.crt"]})
        from shared.jetstream import set_up_stream

        await set_up_stream(admin)
        scp = settings_of(secured, "scp_listener", tmp_path).model_copy(
            update={"nats_tls_ca": certs["ca.crt"]}
        )
        async with linked(scp, "scp_listener") as link:
            assert link.nc is not None and link.nc.connected_url is not None
            event = record_event(1, "2026-01-05", pid="TLS-1")
            await link.publish(event.type, event.to_json(), event.id)
        with pytest.raises((ssl.SSLError, NatsError, OSError)):
            await nats.connect(
                server.url,
                user="scp_listener",
                password=passwords["scp_listener"],
                tls=ssl.create_default_context(),  # the system's CAs: not ours
                allow_reconnect=False,
                connect_timeout=3,
            )

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_rtops_migrate_sets_up_the_stream_as_admin_and_says_what_a_service_user_lacks(
    secured: dict[str, Any], tmp_path: Path
) -> None:
    """``rtops migrate`` on an external NATS (the migrate job): the admin creates the stream;
    run with a service's user it stops with a line naming the credentials it needs."""
    from services.cli import CliError, set_up_external_stream

    stream = "MIGRATED"
    admin = settings_of(secured, natsauth.ADMIN_USER, tmp_path).model_copy(
        update={"stream_name": stream, "subject_prefix": "migrated"}
    )
    set_up_external_stream(admin)

    async def subjects() -> list[str]:
        nc = await connect_as(secured, natsauth.ADMIN_USER, Violations())
        try:
            return list((await nc.jetstream().stream_info(stream)).config.subjects or [])
        finally:
            await nc.jetstream().delete_stream(stream)
            await nc.close()

    assert asyncio.run(subjects()) == ["migrated.>"]
    service = admin.model_copy(
        update={"nats_user": "billing", "nats_password": SecretStr(secured["passwords"]["billing"])}
    )
    with pytest.raises(CliError, match="admin user's RTOPS_NATS_USER and RTOPS_NATS_PASSWORD"):
        set_up_external_stream(service)
