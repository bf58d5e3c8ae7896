"""Thin Prefect tasks: one batch of images -> one call into xraycore."""
