"""``rtops``: the suite's command line (run, migrate, token, schemas).

It is the composition root of the whole suite, so it may name every service; the services
themselves never import one another. Imports are made where a command needs them, so that
``rtops token`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shared.settings import ROLES, RtopsSettings, SettingError

if TYPE_CHECKING:
    from shared.natsd import EmbeddedNats

SERVICES_DIR = Path(__file__).parent
# Start order: the SCP first, so that consumers find the stream it ensures.
ORDER = ("scp_listener", "qa_tracker", "scheduler", "documents", "billing")
LOCK_NAME = "rtops.lock"


class CliError(Exception):
    """Printed as one line ``rtops: <message>``; exit status 1."""


def existing_services() -> list[str]:
    return [name for name in ORDER if (SERVICES_DIR / name / "__main__.py").exists()]


def migrate_all(settings: RtopsSettings, names: list[str]) -> None:
    from shared.db import make_engine, migrate

    for name in names:
        engine = make_engine(settings, name)
        try:
            migrate(engine, settings, name, SERVICES_DIR / name / "migrations")
        finally:
            engine.dispose()
        print(f"rtops: {name} database at head", flush=True)


# ---------------------------------------------------------------- one suite per var dir


def lock_var_dir(var_dir: Path) -> IO[str]:
    """Hold ``var/rtops.lock`` (flock) while the suite runs: the OS releases it when this
    process dies, however it dies. A second supervisor on the same var dir is refused."""
    import fcntl

    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip().split()[:1]
        handle.close()
        who = f" (pid {holder[0]})" if holder and holder[0].isdigit() else ""
        raise CliError(
            f"another `rtops run`{who} is already running on {var_dir.resolve()}: stop it "
            "first (Ctrl-C in its terminal), or set RTOPS_VAR_DIR to another directory to run a "
            "second suite"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def suite_running(var_dir: Path) -> bool:
    """Whether a supervisor holds ``var_dir``'s lock now."""
    import fcntl

    try:
        handle = (var_dir / LOCK_NAME).open("r")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        return False


def running_records_dir() -> Path:
    """Where each running supervisor records its var dir, for ``rtops token`` elsewhere:
    ``$XDG_RUNTIME_DIR/rtops/running`` (else ``~/.cache/rtops/running``)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "rtops" / "running"


def _record_path(var_dir: Path) -> Path:
    import hashlib

    digest = hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:16]
    return running_records_dir() / digest


def record_running(var_dir: Path) -> Path | None:
    record = _record_path(var_dir)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{var_dir.resolve()}\n")
    except OSError:
        return None  # a read-only home: `rtops token` then needs RTOPS_VAR_DIR
    return record


def running_var_dirs() -> list[Path]:
    """The var dirs of the suites running now (stale records are skipped)."""
    try:
        records = sorted(running_records_dir().iterdir())
    except OSError:
        return []
    found = []
    for record in records:
        try:
            var_dir = Path(record.read_text().strip())
        except OSError:
            continue
        if suite_running(var_dir):
            found.append(var_dir)
    return found


# ---------------------------------------------------------------- run


def service_urls(names: list[str]) -> dict[str, str]:
    """Each service with pages (a ``pages.py``) at its HTTP port on this machine: the staff
    pages' switcher and the patient timeline under ``rtops run`` (ports moved by settings
    included)."""
    import importlib

    urls = {}
    for name in names:
        if not (SERVICES_DIR / name / "pages.py").exists():
            continue
        module = importlib.import_module(f"services.{name}.settings")
        for cls in vars(module).values():
            if (
                isinstance(cls, type)
                and issubclass(cls, RtopsSettings)
                and cls is not RtopsSettings
            ):
                settings = cls()
                field = next((f for f in cls.model_fields if f.endswith("http_port")), None)
                if field:
                    urls[name] = f"http://localhost:{getattr(settings, field)}"
    return urls


def check_ports(names: list[str]) -> frozenset[int]:
    """Before anything starts: every port the services' settings name is free, and no two
    name the same port. ``SettingError`` names the port and the setting."""
    import importlib

    from shared.natsd import check_port

    taken: dict[int, str] = {}
    for name in names:
        module = importlib.import_module(f"services.{name}.settings")
        classes = [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, RtopsSettings) and c is not RtopsSettings
        ]
        for cls in classes:
            settings = cls()
            for field in cls.model_fields:
                port = getattr(settings, field)
                if not field.endswith("_port") or not isinstance(port, int) or not port:
                    continue
                setting = f"RTOPS_{field.upper()}"
                if taken.get(port, setting) != setting:
                    raise SettingError(
                        f"{taken[port]} and {setting} are both {port}: give each its own port"
                    )
                taken[port] = setting
                host = getattr(settings, field.removesuffix("_port") + "_host", "0.0.0.0")
                check_port(host, port, setting)
    return frozenset(taken)


def run(settings: RtopsSettings) -> int:
    from shared.auth import dev_signing_key
    from shared.natsd import NatsDidNotStart, die_with_parent

    names = existing_services()
    lock = lock_var_dir(settings.var_dir)
    record: Path | None = None
    env = dict(os.environ)
    nats: EmbeddedNats | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    give_back_terminal = take_terminal()
    code = 0
    try:
        service_ports = check_ports(names)
        if not settings.oidc_jwks_url:
            # Made once here, before the services: they and `rtops token` read the same key.
            dev_signing_key(settings)
        nats_users: dict[str, str] = {}
        if not settings.nats_url:
            nats, nats_users = start_embedded_nats(settings, service_ports)
            env["RTOPS_NATS_URL"] = nats.url
            print(f"rtops: embedded NATS (JetStream) at {nats.url}", flush=True)
        if "RTOPS_UI_SERVICE_URLS" not in env:
            env["RTOPS_UI_SERVICE_URLS"] = json.dumps(service_urls(names))
        migrate_all(settings, names)
        record = record_running(settings.var_dir)
        for name in names:
            # Own session, so that Ctrl-C reaches only this supervisor, which stops the
            # services before the NATS server they drain into.
            children[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env | nats_credentials(name, nats_users),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            print(f"rtops: started {name} (pid {children[name].pid})", flush=True)
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(
                        f"rtops: {name} exited with status {proc.returncode} (its reason is "
                        f"logged above, as '{name}: ...'); stopping the suite",
                        file=sys.stderr,
                        flush=True,
                    )
                    stopping, code = True, 1
                    break
            time.sleep(0.2)
    except (SettingError, CliError, NatsDidNotStart) as exc:
        print(f"rtops: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if nats is not None:
            nats.stop()
        if record is not None:
            record.unlink(missing_ok=True)
        lock.close()
        print("rtops: stopped", flush=True)
        give_back_terminal()
    return code


def start_embedded_nats(
    settings: RtopsSettings, service_ports: frozenset[int]
) -> tuple[EmbeddedNats, dict[str, str]]:
    """The embedded NATS with a user per service (docs/security_nats.md): its configuration and
    passwords under var/nats (0600, the passwords made once and kept), the stream created by
    the admin user. Returns the server and every user's password."""
    import asyncio

    from pydantic import SecretStr

    from shared.jetstream import set_up_stream
    from shared.natsauth import ADMIN_USER, write_server_config
    from shared.natsd import EmbeddedNats, NatsDidNotStart

    nats_dir = settings.var_dir / "nats"
    config, passwords = write_server_config(
        nats_dir, stream=settings.stream_name, subject_prefix=settings.subject_prefix
    )
    nats = EmbeddedNats(nats_dir, avoid=service_ports, config=config).start()
    admin = settings.model_copy(
        update={"nats_user": ADMIN_USER, "nats_password": SecretStr(passwords[ADMIN_USER])}
    )
    try:
        asyncio.run(set_up_stream(admin, nats.url))
    except Exception as exc:
        nats.stop()
        raise NatsDidNotStart(
            f"the embedded NATS at {nats.url} started, but its admin user could not create "
            f"stream {settings.stream_name}: {exc or type(exc).__name__} (see "
            f"{nats_dir / 'nats-server.log'})"
        ) from None
    return nats, passwords


def nats_credentials(service: str, passwords: dict[str, str]) -> dict[str, str]:
    """A service's own NATS user for its environment; none on an external NATS (RTOPS_NATS_URL:
    the operator's Secret sets them, or the bus is open)."""
    if service not in passwords:
        return {}
    return {"RTOPS_NATS_USER": service, "RTOPS_NATS_PASSWORD": passwords[service]}


def take_terminal() -> Callable[[], None]:
    """Make this supervisor the terminal's foreground process group, so that Ctrl-C reaches it
    alone: `make run` above it would otherwise take the same SIGINT as a failure (exit 130).
    Returns what gives the terminal back; without a terminal (CI, a service manager) both are
    no-ops."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return lambda: None
    try:
        previous = os.tcgetpgrp(tty)
        if previous != os.getpgrp():  # started in the background: leave the terminal alone
            os.close(tty)
            return lambda: None
        os.setpgid(0, 0)
        # A background group that sets the foreground group is sent SIGTTOU, which stops it.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(tty, os.getpgrp())
    except OSError:
        os.close(tty)
        return lambda: None

    def give_back() -> None:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, previous)
        os.close(tty)

    return give_back


# ---------------------------------------------------------------- token


def find_signing_key(settings: RtopsSettings) -> str:
    """The running suite's key, never a new one. In order: RTOPS_DEV_SIGNING_KEY (the key),
    RTOPS_DEV_SIGNING_KEY_FILE, RTOPS_VAR_DIR/jwt.key when RTOPS_VAR_DIR is set, else
    var/jwt.key in the current directory or the nearest parent that has one, else the var
    dir of the one suite running now (recorded by `rtops run`)."""
    from shared.auth import dev_signing_key, read_key_file

    how = (
        "run `rtops token` from the directory where `make run` runs, or set RTOPS_VAR_DIR to "
        "that suite's var directory (or RTOPS_DEV_SIGNING_KEY_FILE to its jwt.key)"
    )
    if settings.dev_signing_key or settings.dev_signing_key_file:
        return dev_signing_key(settings, create=False)
    if "var_dir" in settings.model_fields_set:
        path = settings.var_dir / "jwt.key"
        if not path.is_file():
            raise CliError(
                f"no signing key in RTOPS_VAR_DIR={settings.var_dir} ({path.resolve()} does "
                "not exist): start the suite there first (`make run` creates it), or " + how
            )
        return read_key_file(path)
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        path = folder / "var" / "jwt.key"
        if path.is_file():
            return read_key_file(path)
    running = [d for d in running_var_dirs() if (d / "jwt.key").is_file()]
    if len(running) == 1:
        return read_key_file(running[0] / "jwt.key")
    if running:
        raise CliError(
            f"{len(running)} suites are running ({', '.join(map(str, running))}): set "
            "RTOPS_VAR_DIR to the one whose token you want"
        )
    raise CliError(
        f"no running suite found and no var/jwt.key in {cwd} or above; nothing was created: " + how
    )


def set_up_external_stream(settings: RtopsSettings) -> None:
    """``rtops migrate`` on an external NATS: create or update the stream with the admin user's
    credentials (RTOPS_NATS_USER/RTOPS_NATS_PASSWORD in the migrate job); the services' own
    users may only look it up."""
    import asyncio

    from shared.jetstream import set_up_stream

    try:
        asyncio.run(set_up_stream(settings))
    except Exception as exc:
        raise CliError(
            f"could not create or update stream {settings.stream_name} on "
            f"{settings.nats_url}: {exc or type(exc).__name__} (the migrate job needs the NATS "
            "admin user's RTOPS_NATS_USER and RTOPS_NATS_PASSWORD)"
        ) from None
    print(f"rtops: stream {settings.stream_name} ready", flush=True)


def issue_token(settings: RtopsSettings, user: str, roles: list[str], hours: float) -> str:
    from datetime import timedelta

    from shared.auth import issue_dev_token

    key = find_signing_key(settings)
    pinned = settings.model_copy(update={"dev_signing_key": key, "dev_signing_key_file": None})
    return issue_dev_token(pinned, user=user, roles=roles, ttl=timedelta(hours=hours))


def write_schemas(out: Path) -> list[Path]:
    """One JSON Schema and one Markdown page per event type."""
    from shared.events import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for type_, schema in json_schemas().items():
        name = type_.removeprefix("rtops.")
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        page = out / f"{name}.md"
        page.write_text(_event_page(type_, name, schema))
        written += [path, page]
    return written


def _event_page(type_: str, name: str, schema: dict[str, object]) -> str:
    rows = _field_rows(schema)
    defs: dict[str, dict[str, object]] = schema.get("$defs", {})  # type: ignore[assignment]
    nested = "".join(
        f"\n### `{def_name}`\n\n| Field | Type | Required | Meaning |\n| --- | --- | --- | --- |\n"
        f"{_field_rows(spec)}\n"
        for def_name, spec in sorted(defs.items())
    )
    description = " ".join(str(schema.get("description", "")).split())
    return (
        f"# `{type_}`\n\n<!-- generated by `make schemas`; edit "
        f"shared/events/{type_.split('.')[1]}.py -->\n\n"
        f"{description}\n\n"
        f"NATS subject: `<prefix>.{name}` (prefix `rtops` by default). Envelope: CloudEvents 1.0"
        " (`id`, `source`, `type`, `time`, `subject`, `datacontenttype`, `dataschema`, `data`);"
        " `id` is derived from the business key, so a re-sent object keeps its id and"
        " `Nats-Msg-Id`.\n\n"
        f"| Field of `data` | Type | Required | Meaning |\n| --- | --- | --- | --- |\n{rows}\n\n"
        f"## Nested types\n{nested}\n"
        f"Full JSON Schema: [`{name}.schema.json`]({name}.schema.json)\n"
    )


def _field_rows(schema: dict[str, object]) -> str:
    props: dict[str, dict[str, object]] = schema.get("properties", {})  # type: ignore[assignment]
    required = set(schema.get("required", []))  # type: ignore[arg-type]
    return "\n".join(
        f"| `{field}` | {_type_of(spec)} | {'yes' if field in required else ''} | "
        f"{' '.join(str(spec.get('description', '')).split())} |"
        for field, spec in props.items()
    )


def _type_of(spec: dict[str, object]) -> str:
    if "$ref" in spec:
        return f"`{str(spec['$ref']).rsplit('/', 1)[-1]}`"
    if "anyOf" in spec:
        return " or ".join(_type_of(s) for s in spec["anyOf"])  # type: ignore[union-attr]
    if spec.get("type") == "array":
        return f"list of {_type_of(spec.get('items', {}))}"  # type: ignore[arg-type]
    if "const" in spec:
        return f"`{spec['const']}`"
    if "enum" in spec:
        return " / ".join(f"`{v}`" for v in spec["enum"])  # type: ignore[union-attr]
    return f"`{spec.get('type', 'any')}`" + (f" ({spec['format']})" if "format" in spec else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run",
        help="start the embedded NATS (unless RTOPS_NATS_URL), migrate, "
        "and run every service in the foreground; Ctrl-C stops all",
    )
    sub.add_parser("migrate", help="bring every service's database to head")
    token = sub.add_parser("token", help="print a bearer token the embedded setup accepts")
    token.add_argument("--role", action="append", required=True, choices=ROLES)
    token.add_argument("--user", required=True)
    token.add_argument("--hours", type=float, default=12.0)
    schemas = sub.add_parser("schemas", help="export event JSON Schemas")
    schemas.add_argument("--out", type=Path, default=Path("docs/events"))
    sub.add_parser(
        "demo",
        add_help=False,
        help="send a simulated department's DICOM traffic to the running suite "
        "(rtops demo --help for its options)",
    )
    if (argv if argv is not None else sys.argv[1:])[:1] == ["demo"]:
        # The demo drives the suite from outside, with the test suite's DICOM factories (one
        # generator of traffic), so it lives beside them.
        from tests.demo import main as demo

        return demo((argv if argv is not None else sys.argv[1:])[1:])
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    try:
        settings = RtopsSettings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "RTOPS_" + "_".join(map(str, error["loc"][:1])).upper()
            print(f"rtops: {name}: {error['msg']}", file=sys.stderr)
        return 1
    try:
        if args.command == "run":
            return run(settings)
        if args.command == "migrate":
            migrate_all(settings, existing_services())
            if settings.nats_url:
                set_up_external_stream(settings)
        elif args.command == "token":
            print(issue_token(settings, args.user, args.role, args.hours))
        elif args.command == "schemas":
            for path in write_schemas(args.out):
                print(path)
    except (CliError, SettingError) as exc:
        print(f"rtops: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
