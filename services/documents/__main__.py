"""``python -m services.documents``: the documents service's API, consumer and letter sweep."""

from __future__ import annotations

from services.documents.app import SERVICE, create_app
from services.documents.settings import DocumentsSettings
from shared.settings import settings_or_exit
from shared.web import serve


def main() -> None:
    settings = settings_or_exit(DocumentsSettings, SERVICE)
    serve(
        lambda: create_app(settings),
        settings,
        host=settings.documents_http_host,
        port=settings.documents_http_port,
        service=SERVICE,
    )


if __name__ == "__main__":
    main()
