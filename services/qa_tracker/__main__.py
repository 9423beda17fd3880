"""``python -m services.qa_tracker``: the QA tracker's API, consumer and sweep.

``python -m services.qa_tracker reassess`` re-derives every fraction with the current review
policy, e.g. after ``RTOPS_QA_POLICY``'s file changed (fractions otherwise keep the verdict of
the policy in force when their facts last changed), and publishes ``rtops.qa.fraction.assessed``
for every verdict that changed. Run it once after upgrading to the release that introduced that
event: it sends revision 1 of every fraction's state, which billing starts from.
"""

from __future__ import annotations

import argparse

from services.qa_tracker.app import SERVICE, create_app
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Outbox
from shared.db import make_engine, session_factory
from shared.outbox import outbox_info
from shared.settings import settings_or_exit
from shared.web import serve


def reassess(settings: QaSettings) -> int:
    engine = make_engine(settings, SERVICE)
    try:
        service = QaService(
            factory=session_factory(engine, **outbox_info(Outbox, SERVICE)),
            policy=settings.review_policy(),
            imaging_devices=settings.qa_imaging_devices,
        )
        return service.rebuild_all(reassess=True)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.qa_tracker", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["serve", "reassess"], default="serve")
    args = parser.parse_args(argv)
    settings = settings_or_exit(QaSettings, SERVICE)
    if args.command == "reassess":
        print(f"reassessed the fractions of {reassess(settings)} patients")
        return
    serve(
        lambda: create_app(settings),
        settings,
        host=settings.qa_http_host,
        port=settings.qa_http_port,
        service="qa_tracker",
    )


if __name__ == "__main__":
    main()
