"""The ``xray`` command line, above the flows: CLI -> flows -> tasks -> xraycore."""
