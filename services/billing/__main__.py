"""``python -m services.billing``: the billing service's API, consumer and sweep.

``python -m services.billing reevaluate`` evaluates every patient's courses again from the
stored facts, e.g. after the rules file (``RTOPS_BILLING_RULES``) or a billing setting changed,
and publishes ``rtops.billing.charge.posted`` (and ``charge.voided``) for every charge that
changed.
"""

from __future__ import annotations

import argparse

from services.billing.app import SERVICE, create_app
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from services.billing.store import Outbox
from shared.collector import tune_collector
from shared.db import make_engine, session_factory
from shared.outbox import outbox_info
from shared.settings import settings_or_exit
from shared.web import serve


def reevaluate(settings: BillingSettings) -> int:
    engine = make_engine(settings, SERVICE)
    try:
        service = BillingService(
            factory=session_factory(engine, **outbox_info(Outbox, SERVICE)),
            rules=settings.rules(),
            settings=settings.engine_settings(),
            payer=settings.payer(),
            gap_days=settings.billing_course_gap_days,
        )
        return service.reevaluate()
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.billing", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["serve", "reevaluate"], default="serve")
    args = parser.parse_args(argv)
    settings = settings_or_exit(BillingSettings, SERVICE)
    if args.command == "reevaluate":
        tune_collector()
        print(f"re-evaluated the courses of {reevaluate(settings)} patients")
        return
    serve(
        lambda: create_app(settings),
        settings,
        host=settings.billing_http_host,
        port=settings.billing_http_port,
        service=SERVICE,
    )


if __name__ == "__main__":
    main()
