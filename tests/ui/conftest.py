"""The UI tests reuse the QA tracker's fixtures (database, clock, service)."""

from tests.qa_tracker.conftest import clock, qa_db, service

__all__ = ["clock", "qa_db", "service"]
