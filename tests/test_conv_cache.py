"""The ``/v1/conv`` session cache under concurrency (service.conv.cache): a shape being compiled holds up no other
shape, requests for the same shape wait for the one build, and a failed build leaves nothing behind. Real threads;
the entries are plain objects (the cache only stores what the engine builds)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sepconv.service.conv.cache import ConvCache


def test_a_slow_build_holds_up_no_other_shape() -> None:
    cache = ConvCache(4)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(10)
        return "A"

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(cache.get_or_build, "a", slow)
        assert started.wait(10)
        # while "a" compiles: another shape builds and is served (before: it waited for the cache's lock)
        b = pool.submit(cache.get_or_build, "b", lambda: "B")
        assert b.result(timeout=5) == ("B", False)
        assert not a.done()
        release.set()
        assert a.result(timeout=10) == ("A", False)
    assert cache.stats() == {"size": 2, "capacity": 4, "hits": 0, "misses": 2, "builds": 2, "evictions": 0}


def test_requests_for_one_shape_share_its_build() -> None:
    cache = ConvCache(4)
    builds, release = [], threading.Event()

    def build() -> object:
        builds.append(1)
        assert release.wait(10)
        return object()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get_or_build, "k", build) for _ in range(8)]
        while not builds:
            threading.Event().wait(0.01)
        threading.Event().wait(0.1)  # the others are waiting by now
        release.set()
        results = [f.result(timeout=10) for f in futures]
    assert len(builds) == 1
    assert len({id(entry) for entry, _ in results}) == 1
    assert sorted(cached for _, cached in results) == [False] + [True] * 7
    assert cache.stats()["builds"] == 1 and cache.stats()["hits"] == 7


def test_a_failed_build_leaves_nothing_and_the_next_request_builds_again() -> None:
    cache = ConvCache(4)

    def broken() -> object:
        raise ValueError("cannot compile")

    with pytest.raises(ValueError, match="cannot compile"):
        cache.get_or_build("k", broken)
    assert cache.get_or_build("k", lambda: "ok") == ("ok", False)
    assert cache.stats()["size"] == 1 and cache.stats()["builds"] == 1


def test_waiters_build_on_their_own_after_a_failure() -> None:
    cache = ConvCache(4)
    started, release, calls = threading.Event(), threading.Event(), []

    def first() -> object:
        calls.append("first")
        started.set()
        assert release.wait(10)
        raise ValueError("first build failed")

    def second() -> str:
        calls.append("second")
        return "built by the waiter"

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(cache.get_or_build, "k", first)
        assert started.wait(10)
        b = pool.submit(cache.get_or_build, "k", second)
        threading.Event().wait(0.1)
        release.set()
        with pytest.raises(ValueError):
            a.result(timeout=10)
        assert b.result(timeout=10) == ("built by the waiter", False)
    assert calls == ["first", "second"]


def test_the_lru_still_evicts_the_oldest() -> None:
    cache = ConvCache(2)
    for key in ("a", "b"):
        cache.get_or_build(key, lambda key=key: key.upper())
    cache.get_or_build("a", lambda: "unused")  # a hit: "a" becomes the newest
    cache.get_or_build("c", lambda: "C")
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert cache.stats()["evictions"] == 1
