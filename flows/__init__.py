"""Prefect flows: list, plan, map batch tasks over Dask, commit, publish."""
