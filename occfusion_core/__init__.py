"""Core package of the OccFusion workflow.

Every stage of the Snakemake DAG is a function in :mod:`occfusion_core.stages` that takes input paths
and a typed config and writes output paths. Nothing in this package imports snakemake.
"""

__version__ = "0.1.0"
