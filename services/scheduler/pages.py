"""Staff pages of the scheduler (placeholder until they land)."""

from fastapi import APIRouter

router = APIRouter()
