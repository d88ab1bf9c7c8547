"""The pass cache file (reconciler/pass_cache.py): used only whole and only by what made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.pass_cache import CacheKey, CacheUnusable, PassCache, cache_file, forget, load, store

KEY = CacheKey("p4kube-system/lb", "sha256:p4info", "code-1")


def _stored(tmp_path: Path, **parts: bytes | None) -> Path:
    path = cache_file(tmp_path, KEY.config)
    store(path, PassCache(KEY, "sha256:snap", parts.get("render", b"render bytes"), parts.get("encoded", b"\x00\x01" * 500)))
    return path


def test_a_stored_cache_loads_back_whole(tmp_path: Path) -> None:
    path = _stored(tmp_path)
    assert path == tmp_path / "p4kube-cache" / "p4kube-system__lb.cache"
    got = load(path, KEY)
    assert got == PassCache(KEY, "sha256:snap", b"render bytes", b"\x00\x01" * 500)
    # no temporary file is left beside it
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_part_left_out_loads_as_none(tmp_path: Path) -> None:
    path = cache_file(tmp_path, KEY.config)
    store(path, PassCache(KEY, "sha256:snap", None, b"enc"))
    got = load(path, KEY)
    assert (got.render, got.encoded) == (None, b"enc")


@pytest.mark.parametrize("field, value, said", [
    ("config", "other/lb", "another config"),
    ("p4info", "sha256:other", "another P4Info"),
    ("code", "code-2", "another version of the reconciler"),
])
def test_a_cache_made_for_other_code_p4info_or_config_is_not_used(tmp_path: Path, field: str, value: str, said: str) -> None:
    path = _stored(tmp_path)
    other = CacheKey(**{**KEY.__dict__, field: value})
    with pytest.raises(CacheUnusable, match=said):
        load(path, other)


def test_a_missing_cache_says_so(tmp_path: Path) -> None:
    with pytest.raises(CacheUnusable, match="none yet"):
        load(cache_file(tmp_path, KEY.config), KEY)


def _damage(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def test_every_damaged_byte_is_refused(tmp_path: Path) -> None:
    """A flipped bit anywhere (magic, header, either part) or a torn file never loads."""
    path = _stored(tmp_path)
    whole = path.read_bytes()
    for at in range(0, len(whole), 7):
        path.write_bytes(whole)
        _damage(path, at)
        try:
            got = load(path, KEY)
        except CacheUnusable:
            continue
        pytest.fail(f"byte {at} flipped and still loaded: {got!r}")
    for cut in (0, 5, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:cut])
        with pytest.raises(CacheUnusable, match="damaged|not a p4kube pass cache"):
            load(path, KEY)
    path.write_bytes(whole + b"x")
    with pytest.raises(CacheUnusable, match="checksum"):
        load(path, KEY)


def test_forget_removes_it_and_tolerates_none(tmp_path: Path) -> None:
    path = _stored(tmp_path)
    forget(path)
    assert not path.exists()
    forget(path)
