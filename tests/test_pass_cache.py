"""The pass cache files (reconciler/pass_cache.py): used only whole and only by what made them."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from reconciler import pass_cache
from reconciler.pass_cache import CacheKey, CacheUnusable, Stored, cache_file, load, store

KEY = CacheKey("p4kube-system/lb", "sha256:p4info", "code-1")
PART = Stored("sha256:snap", b"\x00\x01" * 500)


def _stored(tmp_path: Path, part: str = "encoded") -> Path:
    path = cache_file(tmp_path, KEY.config, part)
    store(path, KEY, PART)
    return path


def test_a_stored_part_loads_back_whole(tmp_path: Path) -> None:
    path = _stored(tmp_path)
    assert path == tmp_path / "p4kube-cache" / "p4kube-system__lb.encoded"
    assert cache_file(tmp_path, KEY.config, "render").name == "p4kube-system__lb.render"
    assert load(path, KEY) == PART
    # no temporary file is left beside it
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="unknown pass cache part"):
        cache_file(tmp_path, KEY.config, "other")


def test_an_empty_part_loads_back(tmp_path: Path) -> None:
    path = cache_file(tmp_path, KEY.config, "render")
    store(path, KEY, Stored("sha256:x", b""))
    assert load(path, KEY) == Stored("sha256:x", b"")


@pytest.mark.parametrize("field, value, said", [
    ("config", "other/lb", "another config"),
    ("p4info", "sha256:other", "another P4Info"),
    ("code", "code-2", "another version of the reconciler"),
])
def test_a_part_made_for_other_code_p4info_or_config_is_not_used(tmp_path: Path, field: str, value: str, said: str) -> None:
    path = _stored(tmp_path)
    other = CacheKey(**{**KEY.__dict__, field: value})
    with pytest.raises(CacheUnusable, match=said):
        load(path, other)


def test_a_missing_part_says_so(tmp_path: Path) -> None:
    with pytest.raises(CacheUnusable, match="none yet"):
        load(cache_file(tmp_path, KEY.config, "render"), KEY)


def test_every_damaged_byte_is_refused(tmp_path: Path) -> None:
    """A flipped bit anywhere (magic, checksum, header, data) or a torn file never loads."""
    path = _stored(tmp_path)
    whole = path.read_bytes()
    for at in range(0, len(whole), 3):
        data = bytearray(whole)
        data[at] ^= 0x40
        path.write_bytes(bytes(data))
        with pytest.raises(CacheUnusable, match="damaged|not a p4kube pass cache") as e:
            load(path, KEY)
        assert e.value.warn == (at >= len(b"p4kube pass cache 1\n"))  # a changed magic reads as another format
    for cut in (0, 5, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:cut])
        with pytest.raises(CacheUnusable, match="damaged|not a p4kube pass cache"):
            load(path, KEY)
    path.write_bytes(whole + b"x")
    with pytest.raises(CacheUnusable, match="checksum"):
        load(path, KEY)


def test_a_rewrite_replaces_the_file_whole(tmp_path: Path) -> None:
    path = _stored(tmp_path)
    store(path, KEY, Stored("sha256:next", b"new"))
    assert load(path, KEY) == Stored("sha256:next", b"new")
    assert len(list(path.parent.iterdir())) == 1


def test_a_file_is_made_as_the_umask_says(tmp_path: Path) -> None:
    """Not mkstemp's 0600: the other writers of a shared audit repository read it too."""
    old = os.umask(0o002)
    try:
        path = _stored(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_temporary_files_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    path = _stored(tmp_path)
    dead, live = path.with_name(f".{path.name}.1.dead"), path.with_name(f".{path.name}.2.live")
    for tmp in (dead, live):
        tmp.write_bytes(b"half written")
    old = time.time() - 2 * 3600
    os.utime(dead, (old, old))
    store(path, KEY, PART)
    assert not dead.exists() and live.exists()


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _stored(tmp_path)
    monkeypatch.setattr(pass_cache, "MAX_BYTES", 100)
    with pytest.raises(CacheUnusable, match="over") as e:
        load(path, KEY)
    assert e.value.warn
