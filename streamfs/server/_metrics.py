"""The server's metrics, declared in one place (served as JSON at /v1/metrics).

Counters only; each name says what it counts. Tests and benchmarks read
them to count requests and bytes (e.g. "a second process sends no blob
request").
"""

from __future__ import annotations

from collections import Counter

BLOB_GET_REQUESTS = "blob_get_requests"  # GET and HEAD of blob bytes
BLOB_BATCH_REQUESTS = "blob_batch_requests"  # POST blobs/batch (many whole blobs)
BLOB_BATCH_BLOBS = "blob_batch_blobs"  # blobs sent in those
BLOB_BYTES_SENT = "blob_bytes_sent"  # by GET and by batches
BLOB_URLS_SIGNED = "blob_urls_signed"  # URLs on the blob front (POST blobs/urls)
BLOB_PUT_REQUESTS = "blob_put_requests"  # uploads that stored bytes
BLOB_BYTES_RECEIVED = "blob_bytes_received"
TREE_GET_REQUESTS = "tree_get_requests"
COMMIT_GET_REQUESTS = "commit_get_requests"

OBJECT_GET_REQUESTS = {"tree": TREE_GET_REQUESTS, "commit": COMMIT_GET_REQUESTS}

ALL = (
    BLOB_GET_REQUESTS,
    BLOB_BATCH_REQUESTS,
    BLOB_BATCH_BLOBS,
    BLOB_BYTES_SENT,
    BLOB_URLS_SIGNED,
    BLOB_PUT_REQUESTS,
    BLOB_BYTES_RECEIVED,
    TREE_GET_REQUESTS,
    COMMIT_GET_REQUESTS,
)


def new_counters() -> Counter[str]:
    counters: Counter[str] = Counter()
    counters.update(dict.fromkeys(ALL, 0))
    return counters
