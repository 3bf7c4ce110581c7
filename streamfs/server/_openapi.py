"""The OpenAPI document of API v1, served at /v1/openapi.json (see docs/protocol.md)."""

from __future__ import annotations

from typing import Any


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamfs", "version": "1"},
        "paths": {},
    }
