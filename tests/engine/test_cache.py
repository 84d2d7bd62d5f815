from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from wanflow.engine import Cache
from wanflow.engine import index as index_mod
from wanflow.engine.cache import parse_size
from wanflow.engine.keys import digest_bytes
from wanflow.engine.store import CorruptObject
from wanflow.errors import EngineError


def test_objects_are_content_addressed_and_written_once(cache: Cache) -> None:
    d = cache.store.put(b"hello")
    assert d == digest_bytes(b"hello") and cache.store.path(d).parent.name == d[:2]
    mtime = cache.store.path(d).stat().st_mtime_ns
    time.sleep(0.01)
    assert cache.store.put(b"hello") == d
    assert cache.store.path(d).stat().st_mtime_ns == mtime  # existing object: no rewrite
    assert cache.store.get(d) == b"hello"
    assert not list(cache.store.tmp.iterdir())


def test_truncated_or_flipped_objects_are_refused(cache: Cache) -> None:
    d = cache.store.put(b"0123456789")
    cache.store.path(d).write_bytes(b"01234")
    with pytest.raises(CorruptObject, match="corrupt"):
        cache.store.get(d)
    with pytest.raises(CorruptObject, match="missing"):
        cache.store.get("ab" * 32)


def test_verify_finds_a_flipped_byte_and_removes_it(cache: Cache) -> None:
    good, bad = cache.store.put(b"good" * 10), cache.store.put(b"bad" * 10)
    raw = bytearray(cache.store.path(bad).read_bytes())
    raw[3] ^= 0x01
    cache.store.path(bad).write_bytes(bytes(raw))
    rep = cache.verify()
    assert rep.checked == 2 and rep.corrupt == (bad,)
    assert cache.store.has(good) and not cache.store.has(bad)
    assert cache.verify().corrupt == ()


def test_gc_evicts_least_recently_used_first(cache: Cache) -> None:
    digests = [cache.store.put(bytes([i]) * 1000) for i in range(4)]
    for i, d in enumerate(digests):
        cache.index._db.set(f"used:{d}", 1000.0 + i)
    cache.index.touch(digests[0])  # the oldest object was just used
    freed = cache.gc(max_bytes=2000)
    assert freed == 2000
    assert [cache.store.has(d) for d in digests] == [True, False, False, True]


def test_full_disk_is_a_clear_error_and_leaves_nothing(cache: Cache, monkeypatch) -> None:
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(EngineError, match="disk full .* WANFLOW_CACHE"):
        cache.store.put(b"payload")
    assert not cache.store.has(digest_bytes(b"payload"))
    assert not list(cache.store.tmp.iterdir())


def test_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a root under a file cannot be created, even by root
    with pytest.raises(EngineError, match="a-file/cache is not writable.*WANFLOW_CACHE"):
        Cache(blocker / "cache")


def test_cache_root_follows_wanflow_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "elsewhere"))
    with Cache() as c:
        assert c.root == tmp_path / "elsewhere" and c.root.is_dir()


def test_weight_memo_hashes_a_file_once_until_it_changes(cache: Cache, tmp_path, monkeypatch) -> None:
    calls = []
    real = index_mod.digest_file
    monkeypatch.setattr(index_mod, "digest_file", lambda p: calls.append(p) or real(p))
    w = tmp_path / "w.bin"
    w.write_bytes(b"x" * 100)
    first = cache.memo.digest(w)
    assert cache.memo.digest(w) == first and len(calls) == 1
    w.write_bytes(b"y" * 100)
    os.utime(w, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.memo.digest(w) == digest_bytes(b"y" * 100) and len(calls) == 2


def test_stale_temp_files_of_dead_writers_are_removed(cache: Cache) -> None:
    cache.store.tmp.mkdir(parents=True, exist_ok=True)
    (cache.store.tmp / "999999999-dead").write_bytes(b"half")
    (cache.store.tmp / f"{os.getpid()}-live").write_bytes(b"mine")
    assert cache.store.clear_stale_tmp() == 1
    assert [p.name for p in cache.store.tmp.iterdir()] == [f"{os.getpid()}-live"]


@pytest.mark.parametrize(("text", "n"), [("1024", 1024), ("2K", 2048), ("1.5G", 3 * 2**29),
                                         ("20GB", 20 * 2**30), ("500MiB", 500 * 2**20)])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(EngineError, match="--max-size 'lots'"):
        parse_size("lots")
