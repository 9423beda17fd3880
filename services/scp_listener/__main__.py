"""``python -m services.scp_listener``: the SCP and its HTTP side in one process."""

from __future__ import annotations

import uvicorn

from services.scp_listener.app import create_app
from services.scp_listener.settings import ScpSettings
from shared.logging import configure_logging


def main() -> None:
    settings = ScpSettings()
    configure_logging(settings.log_level, settings.log_format, service="scp_listener")
    uvicorn.run(
        create_app(settings),
        host=settings.scp_http_host,
        port=settings.scp_http_port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
