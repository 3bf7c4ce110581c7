"""A branch's journal: a log of changes folded into a whole journal, replayed after a crash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from streamfs import _overlay
from streamfs._client import Client
from streamfs._committer import Committer
from streamfs._model import EMPTY_TREE, Commit, encode_tree, object_id
from streamfs._overlay import JOURNAL, JOURNAL_LOG, Overlay
from streamfs._view import RepoView


def _overlay_at(tmp_path: Path) -> Overlay:
    """An overlay over an empty commit whose tree is cached (no server is asked)."""
    client = Client("http://127.0.0.1:9", cache_dir=str(tmp_path / "cache"), cache_size=1 << 30)
    raw = encode_tree(EMPTY_TREE)
    client.cache.put_meta(f"tree:{object_id(raw)}", raw)
    view = RepoView(client, "o", "n", "c" * 64, Commit(object_id(raw), (), "m", "me", 0))
    return Overlay(view, "main", tmp_path / "state")


def _write(overlay: Overlay, path: str, data: bytes) -> None:
    handle = overlay.create(path)
    handle.write(0, data)
    overlay.close_handle(handle)


def _state(overlay: Overlay) -> tuple[dict[str, tuple[str | None, int]], set[str], set[str]]:
    files = {p: (s.blob, s.size) for p, s in overlay.files.items()}
    return files, set(overlay.deleted), set(overlay.dirs)


def test_the_log_replays_onto_the_journal_and_is_folded_in_when_it_outgrows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_overlay, "JOURNAL_LOG_MIN", 16)
    overlay = _overlay_at(tmp_path)
    state = tmp_path / "state"
    longest_log = 0
    overlay.mkdir("d")
    for i in range(60):
        _write(overlay, f"d/f{i:02d}", b"%d" % i)
        if i % 3 == 0:
            overlay.rename(f"d/f{i:02d}", f"d/r{i:02d}")
        if i % 5 == 0:
            overlay.unlink(f"d/f{i:02d}" if i % 3 else f"d/r{i:02d}")
        if (state / JOURNAL_LOG).exists():
            longest_log = max(longest_log, len((state / JOURNAL_LOG).read_text().splitlines()))
        size = len(overlay.files) + len(overlay.deleted) + len(overlay.dirs)
        assert longest_log <= max(16, 2 * size)  # folded in: O(n) bytes for n changes
    overlay.mkdir("empty")
    assert longest_log > 0 and (state / JOURNAL_LOG).exists()  # changes went to the log

    again = Overlay(overlay.view, "main", state)
    assert again.load_journal() == overlay.view.commit_id
    assert _state(again) == _state(overlay)
    assert "d/r03" in again.files and "d/f05" not in again.files and "empty" in again.dirs

    # a torn last line (a crash while appending) and lines of an older journal are ignored
    epoch = json.loads((state / JOURNAL).read_text())["epoch"]
    with open(state / JOURNAL_LOG, "a") as log:
        log.write(json.dumps({"e": "0" * 16, "p": "d/r03", "f": None, "x": True, "d": False}))
        log.write("\n" + json.dumps({"e": epoch, "p": "d/f01", "f": None})[:20])
    third = Overlay(overlay.view, "main", state)
    third.load_journal()
    assert _state(third) == _state(overlay)

    # a commit's rewrite starts a new epoch and drops the log
    overlay.save_journal()
    assert not (state / JOURNAL_LOG).exists()
    assert json.loads((state / JOURNAL).read_text())["epoch"] != epoch
    fourth = Overlay(overlay.view, "main", state)
    fourth.load_journal()
    assert _state(fourth) == _state(overlay)


def test_recovery_hashes_the_staged_bytes_it_finds(tmp_path: Path) -> None:
    overlay = _overlay_at(tmp_path)
    _write(overlay, "a.bin", b"first")
    staged = overlay.files["a.bin"]
    assert staged.local is not None
    (overlay.staging / staged.local).write_bytes(b"written after the last journal line")
    _write(overlay, "gone.bin", b"x")
    gone = overlay.files["gone.bin"].local
    assert gone is not None
    (overlay.staging / gone).unlink()  # lost from the disk: reported, not committed

    again = Overlay(overlay.view, "main", tmp_path / "state")
    again.load_journal()
    assert again.files["a.bin"].size == len(b"written after the last journal line")
    assert (
        again.files["a.bin"].blob
        == hashlib.sha256(b"written after the last journal line").hexdigest()
    )
    assert "gone.bin" not in again.files


def test_a_file_libfuse_hid_when_it_was_deleted_while_open_is_not_recovered(
    tmp_path: Path,
) -> None:
    overlay = _overlay_at(tmp_path)
    _write(overlay, "kept.bin", b"kept")
    _write(overlay, "d.bin", b"deleted while open")
    overlay.rename("d.bin", ".fuse_hidden0000000200000001")  # what libfuse does on unlink
    assert overlay.pending == 1
    hidden = overlay.files[".fuse_hidden0000000200000001"].local
    assert hidden is not None and (overlay.staging / hidden).exists()
    again = Overlay(overlay.view, "main", tmp_path / "state")  # the daemon died meanwhile
    assert again.load_journal() == overlay.view.commit_id
    assert list(again.files) == ["kept.bin"]
    assert not (overlay.staging / hidden).exists()


def test_the_commit_timer_is_not_woken_by_a_file_libfuse_hid(tmp_path: Path) -> None:
    overlay = _overlay_at(tmp_path)
    _write(overlay, "d.bin", b"deleted while open")
    timer = Committer(overlay)  # not started: only asked whether it has work
    assert timer._ready()
    overlay.rename("d.bin", ".fuse_hidden0000000300000001")
    assert not timer._ready() and overlay.pending == 0
