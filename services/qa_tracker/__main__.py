"""``python -m services.qa_tracker``: the QA tracker's API, consumer and sweep."""

from __future__ import annotations

import uvicorn

from services.qa_tracker.app import create_app
from services.qa_tracker.settings import QaSettings
from shared.logging import configure_logging


def main() -> None:
    settings = QaSettings()
    configure_logging(settings.log_level, settings.log_format, service="qa_tracker")
    uvicorn.run(
        create_app(settings),
        host=settings.qa_http_host,
        port=settings.qa_http_port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
