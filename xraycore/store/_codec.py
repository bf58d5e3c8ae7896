"""The shard codec: a whole Zarr shard of images to bytes and back, with the
array's own codec objects and without Zarr's per-chunk asynchronous machinery.

The layout is the sharding codec's (index at the end): the encoded chunks in
order, then the index (offset and length of each chunk, little-endian uint64;
``2**64 - 1`` twice for a chunk that is absent) and its CRC-32C, little-endian.
Only the layout :mod:`xraycore.store._layout` creates is accepted
(:meth:`ShardEncoder.for_array` and :meth:`ShardDecoder.for_array` return None
otherwise, and the caller goes through Zarr); tests check that the encoder's
bytes equal Zarr's own and that the decoder's images equal Zarr's reads.

The buffers that shards and training batches are packed into are reused, not
allocated per shard or batch: :class:`BufferPool`.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

__all__ = [
    "COMPRESSORS",
    "SHARD_BUFFERS",
    "BufferPool",
    "BufferLayout",
    "ShardDecoder",
    "ShardEncoder",
    "ShardFormatError",
]

# One Blosc block per 1 MB: zstd then encodes 1.5x faster and 3% smaller than
# with Blosc's default block size (a chunk is always read whole anyway).
_ZSTD = {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 1 << 20}
_LZ4 = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}
#: Blosc settings per array. Measured per 1024x1024 real scan (size, encode
#: time on one core): preprocessed zstd 0.73 MB / 1.5 ms vs lz4 0.85 MB / 0.8 ms;
#: log lz4 0.70 MB / 0.7 ms vs zstd 0.65 MB / 1.4 ms; gradient magnitude zstd
#: 0.38 MB / 1.2 ms vs lz4 0.49 MB / 0.7 ms; sobel lz4 0.52 MB / 0.6 ms vs zstd
#: 0.46 MB / 1.1 ms; the boolean maps lz4 0.03 MB each. Bit shuffle beat byte
#: and no shuffle for every array but one (log with zstd, at 1.4x its encode
#: time). zstd where it saves the most bytes per ms, lz4 elsewhere: 2.4 MB
#: (``benchmarks/bench_store.py``, docs/benchmarks.md).
COMPRESSORS = {
    "preprocessed": _ZSTD,
    "log": _LZ4,
    "gradient_magnitude": _ZSTD,
    "sobel": _LZ4,
    "canny": _LZ4,
    "mask": _LZ4,
    "histogram": _ZSTD,
}

_ABSENT = np.uint64(2**64 - 1)


class ShardFormatError(ValueError):
    """A shard object that is not what its array's metadata says (truncated, bad index)."""


def _layout(arr) -> tuple | None:
    """(Blosc codec of the chunks, rows per shard) when ``arr`` has the one layout
    this module reads and writes, else None."""
    try:  # what a later Zarr moves or renames sends the caller back through Zarr
        import google_crc32c  # noqa: F401  (Zarr's own CRC-32C)
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation
    except ImportError:
        return None
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner, index = list(sharding.codecs), list(sharding.index_codecs)
    shard = int(arr.metadata.chunk_grid.chunk_shape[0])
    if (
        tuple(sharding.chunk_shape) != (1, *arr.shape[1:])
        or tuple(arr.metadata.chunk_grid.chunk_shape) != (shard, *arr.shape[1:])
        or sharding.index_location != ShardingCodecIndexLocation.end
        or [type(c) for c in inner] != [BytesCodec, BloscCodec]
        or [type(c) for c in index] != [BytesCodec, Crc32cCodec]
        or any(getattr(c.endian, "value", "little") != "little" for c in (inner[0], index[0]))
        or _numcodecs_blosc(inner[1]) is None
    ):
        return None
    return inner[1], shard


def _numcodecs_blosc(codec):
    """A ``numcodecs.Blosc`` with the settings of Zarr's ``BloscCodec`` ``codec``
    (its public attributes), so its bytes are the ones Zarr writes (a test
    compares them); None for settings it cannot express."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE}
    shuffle["bitshuffle"] = Blosc.BITSHUFFLE
    try:
        return Blosc(
            cname=codec.cname.value,
            clevel=int(codec.clevel),
            shuffle=shuffle[codec.shuffle.value],
            blocksize=int(codec.blocksize),
            typesize=int(codec.typesize),
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class _ShardCodec:
    def __init__(self, arr, blosc, shard: int):
        # numcodecs.Blosc with the typesize of the dtype, as Zarr's codec uses.
        self._blosc = _numcodecs_blosc(blosc)
        self.dtype = np.dtype(str(arr.dtype)).newbyteorder("<")
        self.image_shape = tuple(int(n) for n in arr.shape[1:])
        self.shard = shard
        self.fill_value = arr.metadata.fill_value

    @classmethod
    def for_array(cls, arr):
        found = _layout(arr)
        return None if found is None else cls(arr, *found)


class ShardEncoder(_ShardCodec):
    """Encodes one whole shard of an image array to the bytes Zarr would write.

    Zarr spent 1-2.5 ms of CPU per scan on its per-chunk machinery around
    4.5 ms of compression (docs/benchmarks.md).
    """

    def encode(self, images: np.ndarray) -> list:
        """The shard's bytes, as a list of buffers to write one after another."""
        import google_crc32c

        if images.shape[0] != self.shard:
            raise ValueError(f"a shard holds {self.shard} images, got {images.shape[0]}")
        images = images.astype(self.dtype, copy=False)
        parts = [self._blosc.encode(image) for image in images]
        index = np.zeros((len(parts), 2), "<u8")
        index[:, 1] = [len(p) for p in parts]
        index[1:, 0] = np.cumsum(index[:-1, 1])
        index_bytes = index.tobytes()
        crc = np.array([google_crc32c.value(index_bytes)], "<u4").tobytes()
        return [*parts, index_bytes, crc]


class ShardDecoder(_ShardCodec):
    """Decodes one whole shard object (read with one request) into images.

    The images go straight into the caller's buffer (no per-chunk allocation):
    Blosc decompresses each chunk into its row of ``out``.
    """

    @property
    def index_nbytes(self) -> int:
        return self.shard * 16 + 4

    def decode_into(self, data, out: np.ndarray, rows=None) -> None:
        """Decode the shard ``data`` (bytes-like, or None for an absent shard)
        into ``out``: ``out[i]`` gets the shard's image ``rows[i]`` (all images
        in order when ``rows`` is None). Absent chunks hold the fill value.

        Raises :class:`ShardFormatError` for bytes that are not such a shard
        (truncated, or an index whose checksum does not match).
        """
        wanted = range(self.shard) if rows is None else rows
        if out.shape[0] < len(wanted) or out.shape[1:] != self.image_shape:
            raise ValueError(
                f"out must hold {len(wanted)} images of {self.image_shape}, got {out.shape}"
            )
        if out.dtype != self.dtype:
            raise ValueError(f"out must be {self.dtype}, got {out.dtype}")
        if data is None:
            out[: len(wanted)] = self.fill_value
            return
        view, index = self.chunk_index(data)
        self.decode_chunks(view, index, wanted, out, range(len(wanted)))

    def chunk_index(self, data) -> tuple[memoryview, np.ndarray]:
        """``(bytes, index)`` of the shard ``data``: its bytes as a flat
        memoryview and the checked ``(shard, 2)`` index of (offset, length).

        Read once per shard, the index serves every :meth:`decode_chunks` call
        on it. Raises :class:`ShardFormatError` as :meth:`decode_into` does.
        """
        import google_crc32c

        view = memoryview(data).cast("B")
        n = self.index_nbytes
        if len(view) < n:
            raise ShardFormatError(f"shard of {len(view)} bytes is shorter than its index ({n})")
        index_bytes = view[len(view) - n : len(view) - 4]
        crc = int(np.frombuffer(view[len(view) - 4 :], "<u4")[0])
        if google_crc32c.value(bytes(index_bytes)) != crc:
            raise ShardFormatError("shard index checksum does not match (corrupt shard)")
        index = np.frombuffer(index_bytes, "<u8").reshape(self.shard, 2)
        present = ~((index[:, 0] == _ABSENT) & (index[:, 1] == _ABSENT))
        ends = index[present, 0] + index[present, 1]
        if ends.size and int(ends.max()) > len(view) - n:
            raise ShardFormatError(f"a chunk lies outside the shard's {len(view)} bytes")
        return view, index

    def decode_chunks(self, view, index: np.ndarray, rows, out: np.ndarray, positions) -> None:
        """Decode the shard's images ``rows`` into ``out[positions]`` (one
        image each), given :meth:`chunk_index`'s ``(view, index)``.

        The training loader's path: the images of one batch come from many
        shards in a shuffled order, so each lands at its own position of the
        batch buffer. Blosc releases the GIL while it decompresses, so calls
        on disjoint positions run in parallel on threads.
        """
        if out.dtype != self.dtype or out.shape[1:] != self.image_shape:
            raise ValueError(
                f"out must be images of {self.image_shape} in {self.dtype}, "
                f"got {out.shape} {out.dtype}"
            )
        decode = self._blosc.decode
        for k, i in zip(rows, positions, strict=True):
            offset, length = index[k]
            target = out[i]
            if offset == _ABSENT and length == _ABSENT:
                target[...] = self.fill_value
                continue
            if not target.flags.c_contiguous:
                raise ValueError("out must be C-contiguous per image")
            decode(view[int(offset) : int(offset + length)], out=target)

    def decode(self, data) -> np.ndarray:
        """The shard's images, ``(shard, *image_shape)``."""
        out = np.empty((self.shard, *self.image_shape), self.dtype)
        self.decode_into(data, out)
        return out


#: Named arrays a buffer set holds: name -> (shape, dtype).
BufferLayout = dict[str, tuple[tuple[int, ...], Any]]


class BufferPool:
    """Sets of large arrays kept for reuse in one process, by layout (name -> shape, dtype).

    A fresh large buffer comes back from the kernel as new pages, zeroed on
    first touch (transparent huge pages): a shard writer's two ~110 MB sets
    (a batch of 64 at S=1024) cost 1-2 ms of system time per scan when freed
    and allocated per batch on the project's VM, a loader's 32 MB batch 15% of
    the decode time of a 1024 scan (measured). A set comes free in one of two
    ways:

    - given back (:meth:`take`, then :meth:`give_back`), by a caller that knows
      when it is done, as the shard writer does once a shard is written; a
      set is handed to one taker at a time, so two writers never share one;
    - lent (:meth:`lend`): for a caller that cannot say, as the training
      loader, whose batches the caller keeps as long as it likes. The pool
      holds the set and hands it out again only once the pool's references
      are the last ones to every array of it: a batch the caller keeps, a view
      of it or a tensor made with ``torch.from_numpy`` all hold a reference, so
      nothing in use is overwritten.

    At most ``keep`` sets of each layout are kept; a taker that finds none free
    gets new arrays. A set's contents are whatever its last user left.
    """

    def __init__(self, keep: int = 2):
        self._keep = keep
        self._lock = threading.Lock()
        self._free: dict[tuple, list[dict[str, np.ndarray]]] = {}
        self._lent: dict[tuple, list[dict[str, np.ndarray]]] = {}
        # What getrefcount says of an array that only a set of the pool holds,
        # on this interpreter (measured the way _unheld measures).
        self._unused = _refcounts({"": np.empty(0)})[0]

    @staticmethod
    def _key(layout: BufferLayout) -> tuple:
        return tuple(
            (n, tuple(int(d) for d in shape), np.dtype(dtype))
            for n, (shape, dtype) in layout.items()
        )

    @staticmethod
    def _allocate(layout: BufferLayout) -> dict[str, np.ndarray]:
        return {n: np.empty(shape, dtype) for n, (shape, dtype) in layout.items()}

    def take(self, layout: BufferLayout) -> dict[str, np.ndarray]:
        """A set of arrays of ``layout`` nobody else holds, until :meth:`give_back`."""
        with self._lock:
            free = self._free.get(self._key(layout))
            if free:
                return free.pop()
        return self._allocate(layout)

    def give_back(self, buffers: dict[str, np.ndarray]) -> None:
        """Keep a set from :meth:`take` for the next taker of its layout."""
        key = self._key({n: (b.shape, b.dtype) for n, b in buffers.items()})
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self._keep:
                free.append(buffers)
            # Sets of another layout are dropped: one process, one spec, as a rule.
            for other in [k for k in self._free if k != key]:
                del self._free[other]

    def lend(self, layout: BufferLayout) -> dict[str, np.ndarray]:
        """A set of arrays of ``layout`` that the pool hands out again once nobody
        else holds any of them, nor the dict returned (never given back)."""
        key = self._key(layout)
        with self._lock:
            lent = self._lent.setdefault(key, [])
            for buffers in lent:
                if self._unheld(buffers):
                    # A copy: the pool's own dict stays the pool's, and the
                    # caller's dict holds the arrays as long as it lives.
                    return dict(buffers)
            buffers = self._allocate(layout)
            if len(lent) < self._keep:
                lent.append(buffers)
            return dict(buffers)

    def _unheld(self, buffers: dict[str, np.ndarray]) -> bool:
        return all(count == self._unused for count in _refcounts(buffers))


def _refcounts(buffers: dict[str, np.ndarray]) -> list[int]:
    """The reference count of each array of ``buffers``, as seen from here."""
    return [sys.getrefcount(buffers[name]) for name in buffers]


SHARD_BUFFERS = BufferPool()
