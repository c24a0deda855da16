# Helpers shared by all the .smk files (config validation, per-variant stage settings, paths).

import glob
import re
import os

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

from occfusion_core.config import merge  # noqa: E402  (after validation on purpose)

SUBJECTS = config["subjects"]
VARIANTS = config["variants"]

for _subject, _spec in SUBJECTS.items():
    for _variant in _spec.get("variants", []):
        if _variant not in VARIANTS:
            raise ValueError(
                f"config: subjects.{_subject}.variants names '{_variant}', which is not under "
                f"variants: ({', '.join(VARIANTS)})"
            )


def wildcard_pattern(names):
    """Regex matching exactly the configured names (keeps wildcards from spanning '/')."""
    return "|".join(map(re.escape, names))


def variants_of(subject):
    """Variants that run on a subject (all of them unless the subject lists its own)."""
    return SUBJECTS[subject].get("variants", list(VARIANTS))


def body_model_file():
    """The user's SMPL file when configured, else the generated proxy body."""
    path = config.get("body_model", {}).get("path")
    return path if path else "results/body_model/proxy_smpl.pkl"


def stage_config(stage, variant=None):
    """Stage settings: workflow defaults < config[stage] < variants[variant][stage]."""
    own = VARIANTS[variant].get(stage, {}) if variant else {}
    return merge(config.get(stage, {}), own)


def source_config(wildcards):
    spec = SUBJECTS[wildcards.subject]
    return {"source": spec["source"], "options": spec.get(spec["source"], {})}


def core_code(*modules):
    """Core source files a job depends on, as inputs; editing one reruns the job (mtime trigger)."""
    files = []
    for module in modules:
        path = os.path.join(workflow.basedir, "occfusion_core", module)
        files += sorted(glob.glob(os.path.join(path, "*.py"))) if os.path.isdir(path) else [f"{path}.py"]
    return files


def final_model(wildcards):
    return f"results/{wildcards.subject}/{wildcards.variant}/stage1/model.pt"


def subject_variant_pairs():
    return [(s, v) for s in SUBJECTS for v in variants_of(s)]


def all_metrics():
    return [f"results/{s}/{v}/metrics.json" for s, v in subject_variant_pairs()]


def all_targets():
    targets = ["results/summary.csv", "results/summary.png"]
    targets += [f"results/{s}/overlay.mp4" for s in SUBJECTS]
    targets += [f"results/{s}/{v}/renders" for s, v in subject_variant_pairs()]
    return targets


def gpu_threads():
    return max(1, min(workflow.cores, 8))
