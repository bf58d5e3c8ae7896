"""One storage class for local disk and object stores: they differ only by URL.

Modelled on pangeo-forge-recipes' ``FSSpecTarget.from_url``. S3 goes through
s3fs and honours the standard AWS environment (``AWS_ENDPOINT_URL``, keys,
region) or explicit ``storage_options``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec

from .durable import write_durably

__all__ = [
    "S3_CLIENT_CONFIG",
    "CredentialsRefusedError",
    "Storage",
    "redact",
    "refuse_credentials",
]

#: botocore client settings for S3, under any ``config_kwargs`` the caller gives.
#: "standard" retries cover what a busy S3 answers (500, 503 SlowDown, throttling,
#: connection resets, timeouts) with exponential backoff, jitter and a retry
#: quota, so a failing endpoint is not hammered; 10 attempts ride out a busy
#: minute. The timeouts give up on a stalled connection (and retry) instead of
#: hanging a batch: s3fs's own are 5 s to connect and 15 s per read, too short
#: for a 16 MB shard on a congested link. s3fs adds its own retries (5, a class
#: attribute) for what botocore cannot retry: a body cut off while it is read,
#: and unparsable throttling replies.
S3_CLIENT_CONFIG: dict[str, Any] = {
    "retries": {"max_attempts": 10, "mode": "standard"},
    "connect_timeout": 10,
    "read_timeout": 30,
}

_SECRET_WORDS = ("secret", "token", "password", "key", "credential")
# Option names that carry a credential: s3fs's key/secret/token, botocore's
# aws_* names (also inside client_kwargs), and the usual words of other backends.
_CREDENTIAL_NAMES = {"key", "secret", "token", "password"}
_CREDENTIAL_WORDS = (
    "secret",
    "token",
    "password",
    "credential",
    "access_key",
    "account_key",
    "connection_string",
)

HOW_TO_GIVE_CREDENTIALS = (
    "give them through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
    "AWS_SESSION_TOKEN), an AWS profile (AWS_PROFILE, or storage options "
    '{"profile": "name"}), or a Prefect AwsCredentials block (--aws-credentials NAME; '
    "pip install 'xray-pipeline[aws]')"
)


class CredentialsRefusedError(ValueError):
    """Storage options given as a parameter hold something that looks like a credential."""


def _credential_keys(options: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for k, v in options.items():
        name = str(k).lower()
        if isinstance(v, dict):
            found += _credential_keys(v, f"{prefix}{k}.")
        elif v not in (None, "") and (
            name in _CREDENTIAL_NAMES or any(w in name for w in _CREDENTIAL_WORDS)
        ):
            found.append(f"{prefix}{k}")
    return found


def refuse_credentials(options: dict[str, Any] | None, what: str = "storage_options") -> None:
    """Raise :class:`CredentialsRefusedError` when ``options`` holds credentials.

    Options given as a flow parameter are recorded by Prefect (the UI's
    Parameters tab, the REST API, the server's database), so credentials must
    come another way; the message says which.
    """
    if not options:
        return
    if not isinstance(options, dict):
        raise TypeError(f"{what} must be a mapping, got {type(options).__name__}")
    keys = _credential_keys(options)
    if keys:
        raise CredentialsRefusedError(
            f"{what} holds credentials ({', '.join(keys)}), which Prefect would record as a "
            f"flow parameter: {HOW_TO_GIVE_CREDENTIALS}"
        )


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` safe to print: values of secret-looking keys masked."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = redact(v)
        elif any(w in k.lower() for w in _SECRET_WORDS) and k.lower() != "key_prefix":
            out[k] = "***"
        else:
            out[k] = v
    return out


@dataclass
class Storage:
    """A root location (``/path``, ``file://``, ``s3://bucket/prefix``) and its filesystem."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip():
            raise ValueError(f"url must be a non-empty string, got {self.url!r}")
        protocol, _ = fsspec.core.split_protocol(self.url)
        self.protocol = protocol or "file"
        options = dict(self.storage_options)
        if self.protocol in ("s3", "s3a"):
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint and "endpoint_url" not in options and "client_kwargs" not in options:
                options["endpoint_url"] = endpoint
            # A deep copy: botocore rewrites the ``retries`` dict it is given in
            # place (max_attempts -> total_max_attempts), which would change the
            # defaults of every later client.
            options["config_kwargs"] = {
                **copy.deepcopy(S3_CLIENT_CONFIG),
                **options.get("config_kwargs", {}),
            }
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"cannot open storage {self.url!r}: {exc}") from exc
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self._options = options

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> Storage:
        return cls(url, dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of ``parts`` under the root."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def uri(self, *parts: str) -> str:
        """Full URL of ``parts`` under the root, e.g. ``s3://bucket/store/x``."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.protocol}://{p}"

    def child(self, *parts: str) -> Storage:
        return Storage(self.uri(*parts), dict(self.storage_options))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, path: str) -> bytes:
        """Read a file given by its full path or URL on this filesystem."""
        return self.fs.cat_file(self._strip(path))

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a file so that readers see either nothing or the whole of it.

        Object stores publish a PUT atomically; on local disk a temporary file
        is renamed into place.
        """
        target = self.path(rel)
        parent = posixpath.dirname(target)
        if self.is_local:
            os.makedirs(parent, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:  # a full disk: leave nothing half-written behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            self.fs.pipe_file(target, data)

    def write_durably(self, rel: str, parts) -> None:
        """Write the buffers ``parts``, in order, as one file that readers see
        whole or not at all; on local disk also synced to disk and dropped from
        the page cache (see :func:`xraycore.durable.write_durably`). For bulk outputs."""
        if self.is_local:
            write_durably(self.path(rel), parts)
        else:
            self.fs.pipe_file(self.path(rel), b"".join(parts))

    def remove(self, rel: str) -> None:
        target = self.path(rel)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def makedirs(self, rel: str = "") -> None:
        if self.is_local:
            os.makedirs(self.path(rel) if rel else self.root, exist_ok=True)

    def zarr_store(self, rel: str):
        """A Zarr v3 store for ``rel`` under the root."""
        import zarr.storage

        if self.is_local:
            os.makedirs(self.path(rel), exist_ok=True)
            from ._zarr_local import DurableLocalStore

            return DurableLocalStore(self.path(rel))
        fs = self.fs
        if not getattr(fs, "async_impl", False):
            raise ValueError(f"protocol {self.protocol!r} has no async filesystem for Zarr")
        # Zarr needs an async instance of the same filesystem.
        afs = type(fs)(**{**self._options, "asynchronous": True})
        return zarr.storage.FsspecStore(afs, path=self.path(rel), read_only=False)

    def find(self, rel: str = "") -> dict[str, dict[str, Any]]:
        """Every file under ``rel`` (recursive, paginated by the filesystem) with details."""
        base = self.path(rel) if rel else self.root
        if not self.fs.exists(base):
            raise FileNotFoundError(f"source {self.uri(rel) if rel else self.url} does not exist")
        if self.fs.isfile(base):
            return {base: self.fs.info(base)}
        return self.fs.find(base, withdirs=False, detail=True)

    def safe_description(self) -> str:
        opts = redact(self._options)
        return f"{self.url}" + (f" {opts}" if opts else "")

    def _strip(self, path: str) -> str:
        protocol, rest = fsspec.core.split_protocol(path)
        return rest if protocol else path
