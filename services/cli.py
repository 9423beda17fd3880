"""``rtops``: the suite's command line (run, migrate, token, schemas).

It is the composition root of the whole suite, so it may name every service; the services
themselves never import one another.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.auth import issue_dev_token
from shared.db import make_engine, migrate
from shared.events import json_schemas
from shared.natsd import EmbeddedNats
from shared.settings import ROLES, RtopsSettings

SERVICES_DIR = Path(__file__).parent
# Start order: the SCP first, so that consumers find the stream it ensures.
ORDER = ("scp_listener", "qa_tracker", "scheduler", "documents", "billing")


def existing_services() -> list[str]:
    return [name for name in ORDER if (SERVICES_DIR / name / "__main__.py").exists()]


def migrate_all(settings: RtopsSettings, names: list[str]) -> None:
    for name in names:
        engine = make_engine(settings, name)
        try:
            migrate(engine, settings, name, SERVICES_DIR / name / "migrations")
        finally:
            engine.dispose()
        print(f"rtops: {name} database at head", flush=True)


def run(settings: RtopsSettings) -> int:
    names = existing_services()
    env = dict(os.environ)
    nats: EmbeddedNats | None = None
    if not settings.nats_url:
        nats = EmbeddedNats(settings.var_dir / "nats").start()
        env["RTOPS_NATS_URL"] = nats.url
        print(f"rtops: embedded NATS (JetStream) at {nats.url}", flush=True)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        migrate_all(settings, names)
        for name in names:
            # Own session, so that Ctrl-C reaches only this supervisor, which stops the
            # services before the NATS server they drain into.
            children[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], env=env, start_new_session=True
            )
            print(f"rtops: started {name} (pid {children[name].pid})", flush=True)
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(
                        f"rtops: {name} exited with {proc.returncode}; stopping the suite",
                        file=sys.stderr,
                        flush=True,
                    )
                    stopping, code = True, 1
            time.sleep(0.2)
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
        print("rtops: stopped", flush=True)
    return code


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for type_, schema in json_schemas().items():
        path = out / f"{type_.removeprefix('rtops.')}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


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
    args = parser.parse_args(argv)
    settings = RtopsSettings()
    if args.command == "run":
        return run(settings)
    if args.command == "migrate":
        migrate_all(settings, existing_services())
    elif args.command == "token":
        from datetime import timedelta

        print(
            issue_dev_token(
                settings, user=args.user, roles=args.role, ttl=timedelta(hours=args.hours)
            )
        )
    elif args.command == "schemas":
        for path in write_schemas(args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
