"""The paper's whole grid as one resumable command: a grid file -> a dask.distributed task graph.

``python -m grid grids/<name>.toml [--dry-run]``: prepare each dataset, extract each model's
features (in shards), probe every task, build the report — on a local cluster, an existing
scheduler or SLURM. This package imports ``extract`` and ``probe``; they never import it.
"""
