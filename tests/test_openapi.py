"""The OpenAPI document matches the routes of the app, is valid, and is what the server serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from streamfs import _errors as errors
from streamfs.server._app import create_app
from streamfs.server._auth import TokenBook
from streamfs.server._openapi import openapi_document
from streamfs.server._storage import LocalStorage
from streamfs.server._store import RepoStore

from .conftest import ServerProcess

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _without_implied_head(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """HEAD is implied wherever GET is (Starlette adds it to every GET route)."""
    return {(path, m) for path, m in pairs if not (m == "HEAD" and (path, "GET") in pairs)}


def _routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(RepoStore(LocalStorage(tmp_path)), TokenBook(None))
    pairs = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        assert route.methods, route.path
        pairs |= {(route.path, method) for method in route.methods}
    return pairs


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    routes = _without_implied_head(_routes(tmp_path))
    documented = _without_implied_head(_documented(openapi_document()))
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the app does not have"


def test_document_is_valid_openapi() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_operation_ids_are_unique() -> None:
    ids = [
        op["operationId"]
        for item in openapi_document()["paths"].values()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))


def test_error_codes_cover_the_wire_names() -> None:
    """Every code an operation names is in ErrorCode, and ErrorCode has every code of _errors."""
    doc = openapi_document()
    known = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    assert set(errors.ERROR_CODES) - {"path_not_found"} <= known  # no endpoint sends that one
    for item in doc["paths"].values():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            assert "500" in op["responses"], op["operationId"]
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    narrowed = response["content"]["application/json"]["schema"]["allOf"][1]
                    codes = narrowed["properties"]["error"]["properties"]["code"]["enum"]
                    assert set(codes) <= known, (op["operationId"], status)


@pytest.mark.timeout(60)
def test_server_serves_the_document(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/v1/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == openapi_document()
