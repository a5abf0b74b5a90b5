"""Triton's system shared-memory extension: registered regions, and tensors read from and written into them.

A client on the same host creates a POSIX shared-memory object (``shm_open``: a file under ``/dev/shm``), puts
input tensors in it and registers it under a name with a ``key`` (``"/input_data"``: the object's name), an
``offset`` into the object and a ``byte_size``. Requests then name tensors by region, offset (relative to the
region) and byte size instead of carrying the bytes; outputs asked for in a region are written there.

Rules, as Triton's shared-memory manager has them, and tighter where Triton trusts the client:

* region names: 1..256 printable characters, no ``/`` (they sit in URL paths); registering a name twice is an
  error; at most :data:`MAX_REGIONS` regions;
* keys name a ``/dev/shm`` object and nothing else: an optional leading ``/`` then one file name (no further
  ``/``, not ``.``/``..``, no control characters); the object is opened read-write (Triton's ``O_RDWR``: outputs
  are written into regions), without following a symlink, must be a regular file, and ``offset + byte_size`` must
  lie within it;
* a tensor's ``offset + byte_size`` must lie within its region, and its byte size must be the tensor's (inputs)
  or hold it (outputs). Nothing outside a registered region is ever read or written.

The server never maps a region: tensors are read with one ``preadv`` into a fresh numpy buffer and written with
``pwrite``. A mapping would spare that one copy (~0.05 ms for a 600 KB image) but a client that shrinks the object
after registering it would make any access to the lost pages raise SIGBUS and kill the server; ``pread`` gets a
short read instead (-> ``InvalidInput``). It also settles lifetimes: an input is the server's own copy from the
moment it is decoded, so unregistering a region while a request that read it runs is harmless; an output is
written only if its region is still registered when the result is ready (else the request fails, as a write into
memory the client may already reuse would be wrong). :meth:`SharedMemoryRegistry.close` (server shutdown)
unregisters every region.

CUDA shared memory is not offered (:class:`~sepconv.service.errors.NotSupported`).
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from sepconv.service.errors import InvalidInput, NotFound

SHM_DIR = "/dev/shm"
MAX_REGIONS = 256
_KEY = re.compile(r"/?([^/\x00-\x1f\x7f]{1,255})")
_NAME = re.compile(r"[^/\x00-\x1f\x7f]{1,256}")


@dataclass
class Region:
    """A registered region: the open object (``fd``), where the region starts in it and its size."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class TensorRef:
    """A tensor's place in shared memory, as a request gives it (``offset`` relative to the region)."""

    region: str
    offset: int
    byte_size: int


def _non_negative(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {value!r}")
    return value


def check_region_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name != name.strip():
        raise InvalidInput(f"invalid shared-memory region name {name!r} (1 to 256 printable characters, no '/')")
    return name


def key_path(key: Any) -> str:
    """The ``/dev/shm`` file a key names (``shm_open``'s rule), or ``InvalidInput`` for anything else."""
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None or m.group(1) in (".", ".."):
        raise InvalidInput(f"invalid shared-memory key {key!r}: it must name a POSIX shared-memory object, "
                           "e.g. '/input_data' (one name, no other '/')")
    return os.path.join(SHM_DIR, m.group(1))


def tensor_ref(params: dict[str, Any], what: str) -> TensorRef | None:
    """The shared-memory place a tensor's parameters give (``shared_memory_region``, ``shared_memory_byte_size``,
    optional ``shared_memory_offset``), ``None`` when they name no region."""
    if "shared_memory_region" not in params:
        if "shared_memory_byte_size" in params or "shared_memory_offset" in params:
            raise InvalidInput(f"{what}: shared_memory_byte_size/offset given without shared_memory_region")
        return None
    region = check_region_name(params["shared_memory_region"])
    if "shared_memory_byte_size" not in params:
        raise InvalidInput(f"{what}: 'shared_memory_byte_size' must be given with 'shared_memory_region'")
    size = _non_negative(params["shared_memory_byte_size"], f"{what}: shared_memory_byte_size")
    offset = _non_negative(params.get("shared_memory_offset", 0), f"{what}: shared_memory_offset")
    return TensorRef(region, offset, size)


class SharedMemoryRegistry:
    """The registered system shared-memory regions of this server (both transports use the same one)."""

    def __init__(self, max_regions: int = MAX_REGIONS) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        self.max_regions = max_regions

    # -- the extension's calls -------------------------------------------------------------------------
    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        name = check_region_name(name)
        path = key_path(key)
        offset = _non_negative(offset, "'offset'")
        byte_size = _non_negative(byte_size, "'byte_size'")
        with self._lock:
            if name in self._regions:
                raise InvalidInput(f"shared memory region {name!r} already in manager")
            if len(self._regions) >= self.max_regions:
                raise InvalidInput(f"{self.max_regions} shared-memory regions are registered already; "
                                   "unregister some first")
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise InvalidInput(f"unable to open shared memory region {name!r}: key {key!r}: "
                                   f"{exc.strerror}") from exc
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise InvalidInput(f"failed to register shared memory region {name!r}: key {key!r} is not a "
                                       "shared-memory object")
                if offset + byte_size > info.st_size:
                    raise InvalidInput(f"failed to register shared memory region {name!r}: offset {offset} + "
                                       f"byte_size {byte_size} is past the end of {key!r} ({info.st_size} bytes)")
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = Region(name, key, offset, byte_size, fd)

    def unregister(self, name: str | None = None) -> None:
        """Unregister one region (an unknown name is no error, as in Triton) or, with ``None``, all."""
        with self._lock:
            names = list(self._regions) if name is None else [name]
            for n in names:
                region = self._regions.pop(n, None)
                if region is not None:
                    os.close(region.fd)
                    region.fd = -1

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if name is None:
                return [r.status() for r in self._regions.values()]
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"Unable to find system shared memory region: {name!r}")
            return [region.status()]

    def close(self) -> None:
        self.unregister(None)

    def __len__(self) -> int:
        return len(self._regions)

    # -- tensors ---------------------------------------------------------------------------------------
    def _place(self, ref: TensorRef, what: str) -> Region:
        """The region of ``ref`` once its offset and size are checked against it (call with the lock held)."""
        region = self._regions.get(ref.region)
        if region is None:
            raise InvalidInput(f"{what}: Unable to find shared memory region: {ref.region!r}")
        if ref.offset > region.byte_size or ref.byte_size > region.byte_size - ref.offset:
            raise InvalidInput(f"{what}: invalid offset + byte size for shared memory region {ref.region!r}: "
                               f"{ref.offset} + {ref.byte_size} > {region.byte_size}")
        return region

    def read(self, ref: TensorRef, what: str) -> np.ndarray:
        """A copy of the ``ref.byte_size`` bytes at ``ref`` (uint8, aligned for any datatype)."""
        with self._lock:
            region = self._place(ref, what)  # before allocating: the size is the client's, checked against the region
            out = np.empty(ref.byte_size, dtype=np.uint8)
            got = os.preadv(region.fd, [out], region.offset + ref.offset) if ref.byte_size else 0
        if got != ref.byte_size:
            raise InvalidInput(f"{what}: shared memory region {ref.region!r} ends before the tensor (its object "
                               "was shrunk after it was registered)")
        return out

    def write(self, ref: TensorRef, data: Any, what: str) -> None:
        """Write ``data`` (bytes-like, at most ``ref.byte_size``) at ``ref``."""
        view = memoryview(data).cast("B")
        if view.nbytes > ref.byte_size:
            raise InvalidInput(f"{what}: shared memory size specified with the request ({ref.byte_size} bytes) "
                               f"should be at least {view.nbytes} bytes to hold the results")
        with self._lock:
            region = self._place(ref, what)
            at, done = region.offset + ref.offset, 0
            while done < view.nbytes:
                n = os.pwrite(region.fd, view[done:], at + done)
                if n <= 0:
                    raise InvalidInput(f"{what}: could not write into shared memory region {ref.region!r}")
                done += n
