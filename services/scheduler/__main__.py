"""``python -m services.scheduler``: the scheduler's API, pages and consumer.

``python -m services.scheduler seed [FILE]`` loads a resources YAML into an empty database
(default ``RTOPS_SCHEDULER_RESOURCES``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.scheduler.app import SERVICE, create_app, load_resources
from services.scheduler.service import SchedulerService
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import Outbox
from shared.calendar import clinic_calendar
from shared.db import make_engine, session_factory
from shared.outbox import outbox_info
from shared.settings import settings_or_exit
from shared.web import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.scheduler", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["serve", "seed"], default="serve")
    parser.add_argument("file", nargs="?", type=Path)
    args = parser.parse_args(argv)
    settings = settings_or_exit(SchedulerSettings, SERVICE)
    if args.command == "seed":
        path = args.file or settings.scheduler_resources
        if path is None:
            parser.error("name a resources file")
        engine = make_engine(settings, SERVICE)
        try:
            service = SchedulerService(
                factory=session_factory(engine, **outbox_info(Outbox, SERVICE)),
                calendar=clinic_calendar(settings),
                policy=settings.policy(),
            )
            loaded = service.seed(load_resources(path))
        finally:
            engine.dispose()
        print("resources loaded" if loaded else "resources exist already: nothing loaded")
        return
    serve(
        lambda: create_app(settings),
        settings,
        host=settings.scheduler_http_host,
        port=settings.scheduler_http_port,
        service=SERVICE,
    )


if __name__ == "__main__":
    main()
