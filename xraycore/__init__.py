"""xraycore: pure image operations and storage for chest X-ray pipelines.

No Prefect, no Dask: usable from a notebook, a DataLoader or a plain script.
"""

__version__ = "0.1.0"
