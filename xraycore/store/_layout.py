"""The Zarr layout of a store's images: one array per output, one image per
chunk, ``shard_size`` images per shard, Blosc as :data:`xraycore.store._codec.COMPRESSORS` says."""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any

from xraycore.store import _codec, packing, schema

if TYPE_CHECKING:
    from xraycore.image.pipeline import PipelineSpec
    from xraycore.store.storage import Storage

__all__ = [
    "array_rows",
    "create_arrays",
    "group_attributes",
    "open_group",
    "shard_rows",
    "stored_arrays",
]


def shard_rows(batch_size: int) -> int:
    """The largest divisor of ``batch_size`` not above :data:`schema.SHARD_SIZE`."""
    return max(d for d in range(1, min(batch_size, schema.SHARD_SIZE) + 1) if batch_size % d == 0)


def shard_key(name: str, arr, shard_index: int) -> str:
    """The object holding shard ``shard_index`` of the stored array ``name``
    (``arr``, its Zarr array), relative to the store:
    ``images.zarr/<name>/c/<shard>/0/0``.

    The array's own Zarr metadata names it, so it is the same key for an array
    stored unsharded (the histogram: one chunk of a shard's rows per object).
    """
    zeros = (0,) * (arr.ndim - 1)
    return posixpath.join(schema.IMAGES, name, arr.metadata.encode_chunk_key((shard_index, *zeros)))


def _metadata(storage: Storage, *path: str) -> dict[str, Any] | None:
    """A node's Zarr v3 metadata document (``zarr.json``), or None when absent.

    Read as JSON, without Zarr: a run with nothing to do never imports it.
    """
    import json
    import posixpath

    try:
        return json.loads(storage.read_bytes(posixpath.join(schema.IMAGES, *path, "zarr.json")))
    except FileNotFoundError:
        return None


def group_attributes(storage: Storage) -> dict[str, Any] | None:
    """The group's attributes (format, pipeline, sizes), or None without a group."""
    found = _metadata(storage)
    return None if found is None else dict(found.get("attributes") or {})


def array_rows(storage: Storage, name: str) -> int:
    """Rows (the first dimension) of the array ``name``."""
    found = _metadata(storage, name)
    if found is None:
        raise ValueError(f"store {storage.url} has no array {name!r}")
    return int(found["shape"][0])


def open_group(storage: Storage, mode: str = "r"):
    """The store's Zarr group (``mode`` as :func:`zarr.open_group` takes it)."""
    import zarr

    return zarr.open_group(storage.zarr_store(schema.IMAGES), mode=mode, zarr_format=3)


def stored_arrays(group) -> dict[str, tuple[Any, packing.ArraySpec]]:
    """Name -> (``zarr.Array``, its :class:`~xraycore.store.packing.ArraySpec`) of
    every array the group's attributes list, in their order."""
    out = {}
    for name in group.attrs["arrays"]:
        arr = group[name]
        spec = packing.ArraySpec.from_attributes(
            name, str(arr.dtype), arr.shape[1:], dict(arr.attrs)
        )
        out[name] = (arr, spec)
    return out


def create_arrays(storage: Storage, spec: PipelineSpec, batch_size: int) -> dict[str, Any]:
    """Create the group and one empty array per output; returns the attributes
    recorded on the group (format, pipeline and its hash, batch and shard sizes)."""
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(storage.zarr_store(schema.IMAGES), mode="w", zarr_format=3)
    shard = shard_rows(batch_size)
    arrays = packing.array_specs(spec)
    for a in arrays:
        image = len(a.shape) == 2
        group.create_array(
            a.name,
            shape=(0, *a.shape),
            dtype=a.dtype,
            chunks=(1, *a.shape) if image else (shard, *a.shape),
            shards=(shard, *a.shape) if image else None,
            compressors=BloscCodec(**_codec.COMPRESSORS[a.name]),
            fill_value=a.fill_value,
            attributes=a.attributes(),
            dimension_names=("row", "y", "x") if image else ("row", "bin"),
        )
    attrs = {
        "format": schema.FORMAT,
        "pipeline_hash": spec.hash,
        "pipeline": spec.to_dict(),
        "batch_size": batch_size,
        "shard_size": shard,
        "size": spec.size,
        "arrays": [a.name for a in arrays],
    }
    group.attrs.update(attrs)
    return attrs
