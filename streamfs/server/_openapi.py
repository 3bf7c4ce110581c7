"""The OpenAPI 3.1 document of API v1, served at /v1/openapi.json (prose: docs/protocol.md).

Built from small helpers so that each operation reads as one call: its
summary, success responses, error codes, parameters and body. Every error
response is the shared ``Error`` schema narrowed to the codes that operation
can send. tests/test_openapi.py checks that every route of ``create_app`` is
documented here, and nothing else, and that the document is valid OpenAPI.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

REPO = "/v1/repos/{owner}/{name}"

ERROR_CODES = {
    "invalid": "a bad name, path, id, revision, parameter or body; an ambiguous commit prefix",
    "client_disconnected": "the client went away mid-request",
    "unauthorized": "a malformed Authorization header, an unknown token, or a token is needed",
    "forbidden": "the token lacks the right for this repository",
    "repo_not_found": "no such repository",
    "revision_not_found": "no such revision, branch or parent commit",
    "not_found": "an object this repository does not hold, or an unknown URL",
    "method_not_allowed": "the path takes other methods (see the Allow header)",
    "already_exists": "the repository, branch or tag exists already",
    "conflict": "the changes do not fit the tree, or touch paths another commit changed",
    "too_large": "the body is over the limit",
    "range_not_satisfiable": "a Range header that is not one satisfiable byte range",
    "integrity": "the uploaded bytes do not hash to the blob id",
    "http_error": "another error raised by the HTTP framework",
    "internal": "a bug in the server",
}
REASONS = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found"}
REASONS |= {409: "Conflict", 413: "Too large", 416: "Range not satisfiable"}
REASONS |= {422: "Integrity", 500: "Internal error"}

# ------------------------------------------------------------------ schema helpers


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], **properties: Json) -> Json:
    return {"type": "object", "properties": properties, "required": required}


def typed(kind: str, description: str = "", **extra: Any) -> Json:
    schema: Json = {"type": kind, **extra}
    if description:
        schema["description"] = description
    return schema


def array(items: Json, **extra: Any) -> Json:
    return {"type": "array", "items": items, **extra}


def nullable(schema: Json) -> Json:
    return {"oneOf": [schema, {"type": "null"}]}


def with_description(schema: Json, description: str) -> Json:
    return {**schema, "description": description}


ID = ref("ObjectId")
COUNT = typed("integer", minimum=0)
BOOL = typed("boolean")
BINARY = typed("string", format="binary")

# ------------------------------------------------------------------ operation helpers


def header(description: str) -> Json:
    return {"description": description, "schema": typed("string")}


def ok(description: str, schema: Json | None = None, headers: Json | None = None) -> Json:
    response: Json = {"description": description}
    if schema is not None:
        response["content"] = {"application/json": {"schema": schema}}
    if headers:
        response["headers"] = headers
    return response


def errors(codes: dict[int, str]) -> Json:
    """Error responses: status -> space-separated error codes, plus 500 ``internal``."""
    responses: Json = {}
    for status, names in sorted((codes | {500: "internal"}).items()):
        code = {"enum": names.split()}
        schema = {"allOf": [ref("Error"), obj(["error"], error=obj(["code"], code=code))]}
        response = ok(f"{REASONS[status]}: {names.replace(' ', ', ')}", schema)
        if status == 401:
            response["headers"] = {"WWW-Authenticate": header("Bearer")}
        elif status == 416:
            response["headers"] = {"Content-Range": header("bytes */SIZE")}
        responses[str(status)] = response
    return responses


def param(name: str, where: str, schema: Json, description: str, required: bool = False) -> Json:
    required = required or where == "path"
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": schema,
        "description": description,
    }


def body(schema: Json, media: str = "application/json") -> Json:
    return {"required": True, "content": {media: {"schema": schema}}}


def op(
    op_id: str,
    summary: str,
    responses: Json,
    codes: dict[int, str],
    *,
    params: list[Json] | None = None,
    request: Json | None = None,
    public: bool = False,
) -> Json:
    """One operation: its success ``responses`` and the error ``codes`` it can send."""
    operation: Json = {"operationId": op_id, "summary": summary}
    if params:
        operation["parameters"] = params
    if request is not None:
        operation["requestBody"] = request
    operation["responses"] = responses | errors(codes)
    if public:
        operation["security"] = []
    return operation


def repo_op(op_id: str, summary: str, responses: Json, codes: dict[int, str], **kw: Any) -> Json:
    """An operation on one repository: it can also send the errors every such one can."""
    merged = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "repo_not_found"}
    for status, names in codes.items():
        merged[status] = f"{merged[status]} {names}" if status in merged else names
    return op(op_id, summary, responses, merged, **kw)


def json_ok(schema: str, description: str = "OK") -> Json:
    return {"200": ok(description, ref(schema))}


# ------------------------------------------------------------------ schemas


def schemas() -> Json:
    name = typed("string", "1-100 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    ref_name = typed("string", "parts of A-Z a-z 0-9 . _ - separated by '/'", maxLength=200)
    return {
        "ObjectId": typed("string", "a sha256: 64 lowercase hex digits", pattern="^[0-9a-f]{64}$"),
        "Name": name | {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
        "RefName": ref_name
        | {"pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"},
        "Error": obj(
            ["error"],
            error=obj(["code", "message"], code=ref("ErrorCode"), message=typed("string")),
        ),
        "ErrorCode": typed(
            "string",
            "; ".join(f"{code}: {text}" for code, text in ERROR_CODES.items()),
            enum=list(ERROR_CODES),
        ),
        "Repo": obj(
            ["owner", "name", "private", "default_branch", "created"],
            owner=ref("Name"),
            name=ref("Name"),
            private=BOOL,
            default_branch=ref("RefName"),
            created=typed("integer", "seconds since the epoch"),
        ),
        "RepoCreate": obj(
            ["owner", "name"],
            owner=ref("Name"),
            name=ref("Name"),
            private=BOOL | {"default": False},
            default_branch=ref("RefName") | {"default": "main"},
        ),
        "RepoList": obj(["repos"], repos=array(ref("Repo"))),
        "Refs": obj(
            ["branches", "tags"],
            branches=typed("object", additionalProperties=ID),
            tags=typed("object", additionalProperties=ID),
        ),
        "RefCreate": obj(
            ["name"],
            name=ref("RefName"),
            rev=nullable(typed("string", "a revision; null or missing: the default branch")),
        ),
        "RefCreated": obj(["name", "commit"], name=ref("RefName"), commit=ID),
        "Resolved": obj(
            ["rev", "commit"],
            rev=nullable(typed("string")),
            commit=ID,
            object=typed(
                "string", "the commit itself, as text: sha256 of its UTF-8 bytes is 'commit'"
            ),
        ),
        "Entry": obj(
            ["name", "kind", "id", "size"],
            name=typed("string", "one path component"),
            kind={"enum": ["file", "dir"]},
            id=with_description(ID, "a blob id (file) or a tree id (dir)"),
            size=with_description(COUNT, "bytes of the file, or of all files below the dir"),
            mtime=with_description(COUNT, "seconds since the epoch: the last change"),
        ),
        "Tree": with_description(
            obj(["entries"], entries=array(ref("Entry"))),
            "canonical JSON (sorted keys, no spaces, UTF-8); entries sorted by name",
        ),
        "Commit": with_description(
            obj(
                ["tree", "parents", "message", "author", "time", "meta"],
                tree=ID,
                parents=array(ID, maxItems=16),
                message=typed("string"),
                author=typed("string"),
                time=with_description(COUNT, "the server's clock, seconds since the epoch"),
                meta=typed("object"),
            ),
            "canonical JSON (sorted keys, no spaces, UTF-8)",
        ),
        "LogEntry": {"allOf": [ref("Commit"), obj(["id"], id=ID)]},
        "Log": obj(["commits"], commits=array(ref("LogEntry"))),
        "DiffItem": obj(
            ["path", "id", "size"],
            path=typed("string"),
            id=ID,
            size=COUNT,
            old_id=with_description(ID, "modified files only"),
            old_size=with_description(COUNT, "modified files only"),
        ),
        "Diff": obj(
            ["from", "to", "added", "removed", "modified", "counts", "truncated"],
            **{"from": ID, "to": ID},
            added=array(ref("DiffItem")),
            removed=array(ref("DiffItem")),
            modified=array(ref("DiffItem")),
            counts=obj(
                ["added", "removed", "modified"], added=COUNT, removed=COUNT, modified=COUNT
            ),
            truncated=BOOL,
        ),
        "Change": obj(
            ["op", "path"],
            op={"enum": ["put", "add", "replace", "delete"]},
            path=typed("string", "relative, '/'-separated", minLength=1, maxLength=4096),
            blob=with_description(ID, "required unless op is delete"),
            size=with_description(COUNT, "ignored: the server uses the blob's size"),
        ),
        "CommitRequest": obj(
            ["branch", "changes"],
            branch=ref("RefName"),
            parent=nullable(ID),
            changes=array(ref("Change")),
            message=nullable(typed("string", maxLength=65536)),
            author=nullable(typed("string", maxLength=65536)),
            meta=typed("object", default={}),
        ),
        "CommitResult": obj(
            ["commit", "parent", "rebased", "changed"],
            commit=ID,
            parent=with_description(ID, "the branch head the commit was made on"),
            rebased=BOOL,
            changed=BOOL,
        ),
        "MissingRequest": obj(["ids"], ids=array(ID, maxItems=1_000_000)),
        "MissingResponse": obj(["missing"], missing=array(ID)),
        "BatchRequest": obj(["ids"], ids=array(ID, minItems=1, maxItems=1_000)),
        "BlobUrls": obj(
            ["urls"],
            urls=nullable(array(typed("string", "a URL that serves the blob until it expires"))),
            expires=typed("integer", "Unix time the URLs stop working"),
            ttl=typed("integer", "seconds they were valid for when signed"),
            blake3=array(
                nullable(ID),
                description="the BLAKE3 of each blob of one block (null: a larger blob, or"
                " one stored before the server kept it)",
            ),
        ),
        "BlobStored": obj(["id", "stored"], id=ID, stored=BOOL, size=COUNT),
        "BlockMap": obj(
            ["block_size", "blocks"],
            block_size=typed("integer", "4194304"),
            blocks=array(ID),
            blake3=array(ID),
        ),
        "Metrics": typed("object", additionalProperties=typed("integer")),
    }


# ------------------------------------------------------------------ paths

OWNER = param("owner", "path", ref("Name"), "Repository owner")
NAME = param("name", "path", ref("Name"), "Repository name")
OID = param("id", "path", ID, "Object id")
REV = param("rev", "query", typed("string", maxLength=200), "Default: the default branch")
LIMIT = param("limit", "query", typed("integer", minimum=1, maximum=10_000, default=50), "")
IF_NONE_MATCH = param("If-None-Match", "header", typed("string"), "A matching ETag: 304")
RANGE = param("Range", "header", typed("string"), "bytes=START-END, bytes=START- or bytes=-N")
CACHE_HEADERS = {
    "ETag": header('The object id, quoted: "ID"'),
    "Cache-Control": header("public (private repos: private), max-age=31536000, immutable"),
}
NOT_MODIFIED = {"304": ok("Not modified", headers=CACHE_HEADERS)}


def _server_paths() -> Json:
    create_codes = {400: "invalid", 401: "unauthorized", 403: "forbidden"}
    create_codes |= {409: "already_exists", 413: "too_large"}
    openapi = {"200": ok("OpenAPI 3.1", typed("object"))}
    repos = {
        "get": op(
            "listRepos",
            "Repositories the caller may read",
            json_ok("RepoList"),
            {401: "unauthorized"},
        ),
        "post": op(
            "createRepo",
            "Create a repository and its default branch",
            {"201": ok("Created", ref("Repo"))},
            create_codes,
            request=body(ref("RepoCreate")),
        ),
    }
    return {
        "/v1/openapi.json": {"get": op("openapi", "This document", openapi, {}, public=True)},
        "/v1/metrics": {
            "get": op("metrics", "Request counters", json_ok("Metrics"), {}, public=True)
        },
        "/v1/repos": repos,
    }


def _ref_paths() -> Json:
    def create(op_id: str, summary: str) -> Json:
        codes = {404: "revision_not_found", 409: "already_exists", 413: "too_large"}
        created = {"201": ok("Created", ref("RefCreated"))}
        return repo_op(op_id, summary, created, codes, request=body(ref("RefCreate")))

    resolve = repo_op(
        "resolve",
        "The commit a revision names",
        json_ok("Resolved"),
        {404: "revision_not_found"},
        params=[REV],
    )
    return {
        "": {"get": repo_op("getRepo", "One repository", json_ok("Repo"), {})},
        "/refs": {"get": repo_op("getRefs", "Branches and tags", json_ok("Refs"), {})},
        "/branches": {"post": create("createBranch", "Create a branch at a revision")},
        "/tags": {"post": create("createTag", "Create a tag at a revision; tags never move")},
        "/resolve": {"get": resolve},
    }


def _history_paths() -> Json:
    def required(name: str, description: str) -> Json:
        return param(name, "query", typed("string", minLength=1), description, required=True)

    history = {404: "revision_not_found not_found"}
    diff_params = [required("from", "Old revision"), required("to", "New revision")]
    results = {
        "200": ok("Nothing changed: no commit was made", ref("CommitResult")),
        "201": ok("Committed; the branch moved to the commit", ref("CommitResult")),
    }
    commit_codes = {404: "revision_not_found", 409: "conflict", 413: "too_large"}
    return {
        "/log": {
            "get": repo_op(
                "log", "Commits along first parents", json_ok("Log"), history, params=[REV, LIMIT]
            )
        },
        "/diff": {
            "get": repo_op(
                "diff", "Files that differ", json_ok("Diff"), history, params=diff_params
            )
        },
        "/commits": {
            "post": repo_op(
                "createCommit",
                "Apply changes to a branch (rebased if it moved) and move the branch",
                results,
                commit_codes,
                request=body(ref("CommitRequest")),
            )
        },
        "/commits/{id}": {"get": _object_op("getCommit", "Commit")},
        "/trees/{id}": {"get": _object_op("getTree", "Tree")},
    }


def _object_op(op_id: str, schema: str) -> Json:
    what = schema.lower()
    responses = {"200": ok(f"The {what}'s canonical bytes", ref(schema), CACHE_HEADERS)}
    responses |= NOT_MODIFIED
    params = [OID, IF_NONE_MATCH]
    return repo_op(op_id, f"A {what} by id", responses, {404: "not_found"}, params=params)


def _blob_paths() -> Json:
    read_headers = CACHE_HEADERS | {
        "Accept-Ranges": header("bytes"),
        "Content-Length": header("Bytes of the blob or of the range (on HEAD too)"),
    }
    octets = {"application/octet-stream": {"schema": BINARY}}
    part_headers = read_headers | {"Content-Range": header("bytes FIRST-LAST/SIZE")}
    reads = {
        "200": {"description": "The whole blob", "headers": read_headers, "content": octets},
        "206": {"description": "One range", "headers": part_headers, "content": octets},
    } | NOT_MODIFIED
    read_codes = {404: "not_found", 416: "range_not_satisfiable"}
    read_params = [OID, IF_NONE_MATCH, RANGE]
    stored = {
        "200": ok("This repository holds it already; the body was discarded", ref("BlobStored")),
        "201": ok("Verified and stored", ref("BlobStored")),
    }
    upload = body(BINARY, "application/octet-stream")
    blocks = {"200": ok("sha256 and BLAKE3 of each block", ref("BlockMap"), CACHE_HEADERS)}
    return {
        "/blobs/missing": {
            "post": repo_op(
                "missingBlobs",
                "Which of these blobs this repository does not hold",
                json_ok("MissingResponse"),
                {413: "too_large"},
                request=body(ref("MissingRequest")),
            )
        },
        "/blobs/batch": {
            "post": repo_op(
                "getBlobs",
                "Many whole blobs, concatenated in the order asked",
                {"200": {"description": "The blobs' bytes, one after another", "content": octets}},
                {404: "not_found", 413: "too_large"},
                request=body(ref("BatchRequest")),
            )
        },
        "/blobs/urls": {
            "post": repo_op(
                "blobUrls",
                "Signed URLs that serve these blobs from the static front (null: no front)",
                json_ok("BlobUrls"),
                {404: "not_found"},
                request=body(ref("BatchRequest")),
            )
        },
        "/blobs/{id}": {
            "get": repo_op("getBlob", "Blob bytes", reads, read_codes, params=read_params),
            "head": repo_op("headBlob", "Blob headers", reads, read_codes, params=read_params),
            "put": repo_op(
                "putBlob",
                "Upload a blob; its sha256 is verified before anything is kept",
                stored,
                {413: "too_large", 422: "integrity"},
                params=[OID],
                request=upload,
            ),
        },
        "/blobs/{id}/blocks": {
            "get": repo_op(
                "getBlobBlocks", "Block hashes", blocks, {404: "not_found"}, params=[OID]
            )
        },
    }


def openapi_document() -> Json:
    paths = _server_paths()
    for suffix, item in (_ref_paths() | _history_paths() | _blob_paths()).items():
        paths[REPO + suffix] = {"parameters": [OWNER, NAME], **item}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamfs",
            "version": "1",
            "description": "Versioned, content-addressed data repositories (docs/protocol.md).",
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
