"""``python -m services.scp_listener``: the SCP and its HTTP side in one process."""

from __future__ import annotations

from services.scp_listener.app import create_app
from services.scp_listener.settings import ScpSettings
from shared.settings import settings_or_exit
from shared.web import serve


def main() -> None:
    settings = settings_or_exit(ScpSettings, "scp_listener")
    serve(
        lambda: create_app(settings),
        settings,
        host=settings.scp_http_host,
        port=settings.scp_http_port,
        service="scp_listener",
    )


if __name__ == "__main__":
    main()
