"""Storage credentials from a Prefect block, joined to the storage options inside
the run so that they are never a flow parameter (Prefect records those).

Every flow builds its storage options here, once, at its entry: this is where
credentials given as a parameter are refused.
"""

from __future__ import annotations

from typing import Any

from xraycore.sources.header import Pseudonyms
from xraycore.store.storage import refuse_credentials

__all__ = ["pseudonyms_from", "with_block_credentials"]


def pseudonyms_from(block: str | None) -> Pseudonyms | None:
    """The pseudonyms of the key in the Prefect ``Secret`` block named ``block``,
    loaded inside the run (never a flow parameter); without a block, those of this
    process's ``XRAY_PSEUDONYM_KEY`` (None when unset; a short key stops the run
    here, in one line). Only a block's key is handed to the workers: without one,
    each worker uses its own environment's."""
    if not block:
        return Pseudonyms.from_environment()
    from prefect.blocks.system import Secret

    try:
        secret = Secret.load(block)
    except ValueError as exc:
        raise ValueError(
            f"no Prefect Secret block named {block!r} for the pseudonym key: create it "
            f"(Secret(value=...).save({block!r})) or set XRAY_PSEUDONYM_KEY on every worker"
        ) from exc
    return Pseudonyms(str(secret.get()))


def with_block_credentials(
    storage_options: dict[str, Any] | None, block: str | None
) -> dict[str, Any] | None:
    """``storage_options`` plus the credentials of the prefect-aws ``AwsCredentials``
    block named ``block`` (s3fs's ``key``/``secret``/``token``, or its ``profile``).

    Without a block the options are returned unchanged, and S3 uses the standard
    AWS environment or profile. Options holding credentials themselves are refused
    (``CredentialsRefusedError``): Prefect has recorded them as a parameter.
    """
    refuse_credentials(storage_options, "storage_options")
    if not block:
        return storage_options
    try:
        from prefect_aws import AwsCredentials
    except ImportError as exc:
        raise ValueError(
            f"the credentials block {block!r} needs prefect-aws: pip install 'xray-pipeline[aws]'"
        ) from exc
    creds = AwsCredentials.load(block)
    extra: dict[str, Any] = {}
    if creds.profile_name:
        extra["profile"] = creds.profile_name
    if creds.aws_access_key_id:
        extra["key"] = creds.aws_access_key_id
    if creds.aws_secret_access_key is not None:
        extra["secret"] = creds.aws_secret_access_key.get_secret_value()
    if creds.aws_session_token:
        extra["token"] = creds.aws_session_token
    if creds.region_name:
        extra.setdefault("client_kwargs", {})["region_name"] = creds.region_name
    options = dict(storage_options or {})
    if "client_kwargs" in extra and "client_kwargs" in options:
        extra["client_kwargs"] = {**options["client_kwargs"], **extra["client_kwargs"]}
    return {**options, **extra}
