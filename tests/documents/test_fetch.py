"""Encapsulated PDFs fetched from the SCP's API (``app.scp_fetcher``) against a real HTTP
listener in the test: the bytes with a bearer token and the object's revision; the SCP's 404 a
``NotFound``, its 5xx or silence a ``TransientError`` (the consumer retries)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from services.documents.app import scp_fetcher
from services.documents.settings import DocumentsSettings
from shared.errors import NotFound, TransientError
from tests.documents.events import pdf_document

PDF = b"%PDF-1.4 from the SCP"


class Scp(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, list[str]], str]] = []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: Scp = self.server  # type: ignore[assignment]
        url = urlsplit(self.path)
        server.seen.append((url.path, parse_qs(url.query), self.headers["Authorization"]))
        if "1.2.3.pdf.1" in url.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.end_headers()
            self.wfile.write(PDF)
        elif "1.2.3.pdf.2" in url.path:
            self.send_error(404)
        else:
            self.send_error(500)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scp() -> Iterator[Scp]:
    server = Scp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def settings(tmp_path: Path, url: str, **extra: object) -> DocumentsSettings:
    return DocumentsSettings(
        var_dir=tmp_path,
        documents_scp_url=url,
        dev_signing_key="fetch-test-key-" + "k" * 32,
        **extra,  # type: ignore[arg-type]
    )


def test_the_pdf_is_fetched_with_a_token(scp: Scp, tmp_path: Path) -> None:
    fetch = scp_fetcher(settings(tmp_path, f"http://127.0.0.1:{scp.server_address[1]}/"))
    assert fetch(pdf_document(1).data) == PDF  # type: ignore[arg-type]
    [(path, query, auth)] = scp.seen
    assert path == "/v1/objects/1.2.3.pdf.1/content"
    assert query == {"format": ["pdf"], "revision": ["1"]}
    assert auth.startswith("Bearer ey")


def test_a_token_file_is_used_in_production(scp: Scp, tmp_path: Path) -> None:
    token = tmp_path / "scp-token"
    token.write_text("issued-by-the-idp\n")
    url = f"http://127.0.0.1:{scp.server_address[1]}"
    scp_fetcher(settings(tmp_path, url, documents_scp_token_file=token))(pdf_document(1).data)  # type: ignore[arg-type]
    assert scp.seen[0][2] == "Bearer issued-by-the-idp"


def test_missing_broken_or_absent_scp(scp: Scp, tmp_path: Path) -> None:
    fetch = scp_fetcher(settings(tmp_path, f"http://127.0.0.1:{scp.server_address[1]}"))
    with pytest.raises(NotFound):
        fetch(pdf_document(2).data)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match="answered 500"):
        fetch(pdf_document(3).data)  # type: ignore[arg-type]
    scp.shutdown()
    scp.server_close()
    with pytest.raises(TransientError, match="not reachable"):
        fetch(pdf_document(1).data)  # type: ignore[arg-type]


def test_the_scp_is_found_where_the_pages_settings_put_it(tmp_path: Path) -> None:
    located = DocumentsSettings(
        var_dir=tmp_path, ui_service_urls={"scp_listener": "http://scp.internal:8000/"}
    )
    assert located.scp_url() == "http://scp.internal:8000"
    api = DocumentsSettings(
        var_dir=tmp_path,
        ui_service_urls={"scp_listener": "https://rtops.example/scp"},
        ui_api_urls={"scp_listener": "http://rtops-dicom:8000"},
    )
    assert api.scp_url() == "http://rtops-dicom:8000"
