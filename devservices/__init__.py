"""Real services on one machine, loopback only, for the tests and the benchmarks: a multi-node Ray
cluster, moto's S3 server, an MLflow server, and the checks of what a sweep left in storage.

Development code: pyproject packages only dipmodel and pipeline, so the wheel and the image never
carry it; pytest and `python -m bench.*` find it from the repository root.
"""
