"""``python -m services.qa_tracker``: the QA tracker's API, consumer and sweep."""

from __future__ import annotations

from services.qa_tracker.app import create_app
from services.qa_tracker.settings import QaSettings
from shared.web import serve


def main() -> None:
    settings = QaSettings()
    serve(
        lambda: create_app(settings),
        settings,
        host=settings.qa_http_host,
        port=settings.qa_http_port,
        service="qa_tracker",
    )


if __name__ == "__main__":
    main()
