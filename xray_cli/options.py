"""The options several ``xray`` commands share, and how their text becomes values.

JSON flags become mappings (a bad one is a ``typer.BadParameter``, exit 2), and
the cluster flags (``--cluster``, ``--scheduler``, ``--workers``,
``--cluster-class``, ``--cluster-kwargs``) become the flows' one ``cluster``
value.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

__all__ = [
    "AwsCredentials",
    "Format",
    "LogFormat",
    "StorageOptions",
    "Verbose",
    "Where",
    "cluster_value",
    "json_object",
    "parse_storage_options",
    "parse_where",
]


class LogFormat(StrEnum):
    text = "text"
    json = "json"


Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Prefect's and Dask's own INFO logs.")
]
Format = Annotated[
    LogFormat, typer.Option("--log-format", help="text (a bar on a terminal) or json lines.")
]
StorageOptions = Annotated[
    str | None,
    typer.Option(help="fsspec options, JSON (no credentials: see --aws-credentials)."),
]
AwsCredentials = Annotated[
    str | None,
    typer.Option(help="Name of a prefect-aws AwsCredentials block holding the S3 credentials."),
]


Where = Annotated[
    list[str] | None,
    typer.Option(
        help="Keep the rows whose COLUMN holds VALUE, or any of V1,V2 (repeatable; "
        "COLUMN= keeps the rows without a value), e.g. view_position=PA,AP."
    ),
]


def parse_where(given: list[str] | None) -> dict[str, Any] | None:
    """``--where COLUMN=V1[,V2...]`` flags as a selection: one value as itself,
    several as a list (any of them), an empty one as None (no value)."""
    if not given:
        return None
    where: dict[str, Any] = {}
    for text in given:
        column, sep, values = text.partition("=")
        if not sep or not column.strip():
            raise typer.BadParameter(f"--where must be COLUMN=VALUE[,VALUE...], got {text!r}")
        if column.strip() in where:
            raise typer.BadParameter(f"--where names {column.strip()!r} twice: give V1,V2 once")
        found = [v.strip() for v in values.split(",") if v.strip()]
        where[column.strip()] = None if not found else found[0] if len(found) == 1 else found
    return where


def json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    """The JSON object ``text`` of option ``flag`` (None when not given)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{flag} must be a JSON object")
    return value


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """The fsspec options of ``--storage-options``."""
    return json_object(text, "--storage-options")


def cluster_value(
    cluster: str | None,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: str | None = None,
) -> str | dict[str, Any] | None:
    """The flows' one ``cluster`` value from the CLI's cluster flags: an address
    (``--scheduler``), or a spec (``--cluster``, ``--cluster-class``, else a
    LocalCluster) with ``--cluster-kwargs`` and ``--workers`` on top, or
    ``--cluster`` as it is, or None (the flows' default)."""
    if scheduler:
        return {"address": scheduler}
    kwargs = json_object(cluster_kwargs, "--cluster-kwargs") or {}
    if workers is not None:
        if workers < 1:
            raise typer.BadParameter(f"--workers must be >= 1, got {workers}")
        kwargs["n_workers"] = workers
    if not (cluster_class or kwargs) or (cluster and "://" in cluster):
        return cluster  # a spec name, a YAML path, an address, or None
    from flows.cluster import DEFAULT_CLUSTER, load_cluster_spec

    if cluster_class or not cluster:
        spec = {"cluster_class": cluster_class or DEFAULT_CLUSTER}
    else:
        try:
            spec = load_cluster_spec(cluster)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if spec.get("address"):  # an existing cluster: its size is not ours to set
        return spec
    return {**spec, "cluster_kwargs": {**(spec.get("cluster_kwargs") or {}), **kwargs}}
