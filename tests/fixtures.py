"""Fixtures that some folders' tests use all of: a folder's conftest imports the
one it needs (pytest finds a fixture where its conftest names it), so each is
defined once."""

from __future__ import annotations

import pytest

__all__ = ["prefect_api"]


@pytest.fixture(scope="session", autouse=True)
def prefect_api(prefect_server):
    """Every test of the folder talks to the session's Prefect server (tests/conftest.py)."""
    return prefect_server
