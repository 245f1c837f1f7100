"""reviewflow's library: plain functions over paths, Arrow tables and dataclasses.

Nothing in this package imports Prefect, so it runs (and is tested) alone, e.g. on a
GPU machine that only has torch installed. Orchestration lives in ``flows/``.
"""

__version__ = "0.1.0"
