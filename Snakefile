# OccFusion workflow: an occluded monocular video -> a complete 3D Gaussian human avatar.
#
#   snakemake --cores all --resources gpu=1                 # the default run (config.yaml)
#   snakemake --profile profiles/slurm --configfile my.yaml # on a SLURM cluster
#
# Outputs live under results/ (see results/README.md). Stage settings enter rules as params, so an
# edited stage reruns that stage and what depends on it, nothing upstream.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# The image every job runs in under `snakemake --sdm apptainer` (a .sif file, or docker://REGISTRY/...):
# docs/running.md, "Per-rule containers". Without --sdm apptainer it is not used.
container: config.get("container_image", "occfusion.sif")


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    subject=wildcard_pattern(SUBJECTS),
    variant=wildcard_pattern(VARIANTS),


include: "rules/data.smk"
include: "rules/masks.smk"
include: "rules/optimize.smk"
include: "rules/refine.smk"
include: "rules/render.smk"
include: "rules/animate.smk"
include: "rules/export.smk"
include: "rules/metrics.smk"


rule all:
    default_target: True
    input:
        all_targets(),
