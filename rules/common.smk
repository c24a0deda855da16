# Helpers shared by all the .smk files (config validation, per-variant stage settings, paths).

import glob
import re
import os

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

from occfusion_core.config import OptimizeConfig, RefineConfig, merge  # noqa: E402  (after validation on purpose)

OPTIMIZE_DEFAULT_ITERATIONS = OptimizeConfig.iterations
REFINE_DEFAULT_ITERATIONS = RefineConfig.iterations
from occfusion_core.runlog import host_has_nvidia_gpu  # noqa: E402

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


STAGE_ORDER = ["complete_masks", "optimize", "incontext_inpaint", "refine"]


def variant_stages(variant):
    """The stages a variant runs, in DAG order (optimize always)."""
    listed = set(VARIANTS[variant].get("stages", ["optimize"])) | {"optimize"}
    return [s for s in STAGE_ORDER if s in listed]


for _variant in VARIANTS:
    _stages = variant_stages(_variant)
    _mask_source = merge(config.get("optimize", {}), VARIANTS[_variant].get("optimize", {}))
    if "refine" in _stages and "incontext_inpaint" not in _stages:
        raise ValueError(f"config: variants.{_variant}.stages has refine without incontext_inpaint")
    if _mask_source.get("mask_source") == "complete" and "complete_masks" not in _stages:
        raise ValueError(
            f"config: variants.{_variant}.optimize.mask_source is 'complete' but "
            f"variants.{_variant}.stages lacks complete_masks"
        )


REFERENCE_ROLES = ("ceiling", "control")
"""Roles of the rows that train on ground truth (unoccluded frames, true masks) to be measured against."""


def variant_role(variant):
    """'method', 'baseline', 'ceiling' or 'control' (see the schema)."""
    return VARIANTS[variant].get("role", "method")


def variant_needs_ground_truth(variant):
    """Ceilings and controls use what only a benchmark has (unoccluded frames, true masks)."""
    spec = VARIANTS[variant]
    return (
        variant_role(variant) in REFERENCE_ROLES
        or spec.get("training_frames") == "unoccluded"
        or stage_config("optimize", variant).get("mask_source") == "ground_truth"
    )


def subject_has_ground_truth(subject):
    """True when the subject's data will hold gt/ (unoccluded frames and full masks)."""
    spec = SUBJECTS[subject]
    source = spec["source"]
    options = spec.get(source, {})
    if source == "synthetic":
        return True
    if source == "zju":
        return options.get("occlusion", "zju_band") != "none"
    return options.get("occlusion", {}).get("kind", "none") != "none"


def variants_of(subject):
    """Variants that run on a subject: its own list, else every variant that its data allows (those
    needing ground truth only where it exists)."""
    if "variants" in SUBJECTS[subject]:
        return SUBJECTS[subject]["variants"]
    has_gt = subject_has_ground_truth(subject)
    return [v for v in VARIANTS if has_gt or not variant_needs_ground_truth(v)]


def body_model_file():
    """The user's SMPL file when configured, else the generated proxy body."""
    path = config.get("body_model", {}).get("path")
    return path if path else "results/body_model/proxy_smpl.pkl"


def stage_config(stage, variant=None):
    """Stage settings: workflow defaults < config[stage] < variants[variant][stage].

    Matched budgets (``matched_budget: true``, the default): a variant without stage 3 trains stage 1
    for the stage-1 plus the stage-3 iterations, so every variant gets the same number of Gaussian
    updates."""
    own = VARIANTS[variant].get(stage, {}) if variant else {}
    merged = merge(config.get(stage, {}), own)
    if (
        stage == "optimize"
        and variant
        and config.get("matched_budget", True)
        and "refine" not in variant_stages(variant)
    ):
        stage1 = merged.get("iterations", OPTIMIZE_DEFAULT_ITERATIONS)
        stage3 = stage_config("refine", variant).get("iterations", REFINE_DEFAULT_ITERATIONS)
        merged["iterations"] = stage1 + stage3
    return merged


def training_iterations(variant):
    """Total Gaussian iterations of a variant (stage 1, plus stage 3 where it runs)."""
    total = stage_config("optimize", variant).get("iterations", OPTIMIZE_DEFAULT_ITERATIONS)
    if "refine" in variant_stages(variant):
        total += stage_config("refine", variant).get("iterations", REFINE_DEFAULT_ITERATIONS)
    return total


def training_data(wildcards):
    """The frames stage 1 trains on: the input, or (ceilings) the unoccluded frames with full masks."""
    if VARIANTS[wildcards.variant].get("training_frames") == "unoccluded":
        return f"results/{wildcards.subject}/unoccluded_data"
    return f"results/{wildcards.subject}/data"


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


SUBJECT_DATA_PRIORITY = 2 * len(STAGE_ORDER)
"""Priority of a subject's data jobs (prepare, validate, and the ceiling's unoccluded frames): training
waits for them, so each subject starts as early as it can and subjects run side by side (above every
training job: Snakemake does not pass a job's priority on to the jobs it waits for)."""


def training_stages_after(stage):
    """Priority of a training job (``priority:``): the variant's number of training stages plus the
    number still to come after this one. Every stage of the longest chain (stage 0 -> 1 -> 2 -> 3)
    then outranks a one-stage variant's training, and all training outranks the evaluation jobs
    (render, metrics, animate, export: priority 0). Otherwise a free core may pick a 4-second render,
    or a one-stage variant's training, before stage 3, whose 2 minutes then run alone at the end on
    a machine with an idle core (seen in a fresh-clone demo: a one-stage training ran alone for 78 s
    at the end)."""

    def priority(wildcards):
        stages = variant_stages(wildcards.variant)
        return 2 * len(stages) - 1 - stages.index(stage) if stage in stages else 0

    return priority


def final_model(wildcards):
    """The last model a variant trains: stage 3's when it refines, else stage 1's."""
    stage = "stage3" if "refine" in variant_stages(wildcards.variant) else "stage1"
    return f"results/{wildcards.subject}/{wildcards.variant}/{stage}/model.pt"


def stage0_masks(wildcards):
    """Stage-0 complete masks as an input of stage 1 when the variant has stage 0 (else none)."""
    if "complete_masks" in variant_stages(wildcards.variant):
        return f"results/{wildcards.subject}/{wildcards.variant}/stage0/masks"
    return []


def stage_reports(wildcards):
    """Reports of the variant's stages 0 and 2 (they name the method each stage ran)."""
    base = f"results/{wildcards.subject}/{wildcards.variant}"
    stages = variant_stages(wildcards.variant)
    return [f"{base}/stage0/report.json"] * ("complete_masks" in stages) + [f"{base}/stage2/report.json"] * (
        "incontext_inpaint" in stages
    )


def subject_variant_pairs():
    return [(s, v) for s in SUBJECTS for v in variants_of(s)]


def all_metrics():
    return [f"results/{s}/{v}/metrics.json" for s, v in subject_variant_pairs()]


RENDER_FIGURES = {
    "videos": "all render videos (page)",
    "train": "training frames video",
    "heldout": "held-out views video",
    "orbit": "orbit video",
    "novel_pose": "novel poses video",
}


def render_labels(wildcards):
    """Report label (snakemake --report) of a file of the renders folder ({file} of the report patterns)."""
    return {"figure": RENDER_FIGURES.get(wildcards.file, wildcards.file)}


def animate_labels(wildcards):
    """Report label of an animate video, ``{motion}_{camera}.mp4`` ({file} of the report patterns)."""
    motion, _, camera = wildcards.file.rpartition("_")
    return {"figure": f"motion {motion}, {camera} camera" if motion else wildcards.file}


# Motions of the animate stage (rules/animate.smk). occfusion_core.data.motion.BUILTIN_MOTIONS and the
# schema's enum list the same names (tests/test_motions.py); importing that module here would load
# torch while the workflow is parsed.
BUILTIN_MOTIONS = ["walk_wave"]


def animate_config(subject, variant):
    """animate settings: config < subjects[subject].animate < variants[variant].animate, and the
    workflow's ``device`` where none is set."""
    cfg = merge(config.get("animate", {}), SUBJECTS[subject].get("animate", {}), VARIANTS[variant].get("animate", {}))
    if DEVICE != "auto":
        cfg.setdefault("device", DEVICE)
    return cfg


def animate_motions(subject, variant):
    """{motion name: .npz file}: a built-in name's file under results/motions/, else the listed file,
    named by its stem (the videos are {name}_{camera}.mp4)."""
    from occfusion_core.config import AnimateConfig

    motions = {}
    for entry in animate_config(subject, variant).get("motions", AnimateConfig().motions):
        builtin = entry in BUILTIN_MOTIONS
        name = entry if builtin else os.path.splitext(os.path.basename(entry))[0]
        where = f"config: animate.motions of {subject} x {variant}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"{where}: '{entry}' gives the motion name '{name}'; use letters, digits, _ . -")
        if not builtin and name in BUILTIN_MOTIONS:
            raise ValueError(f"{where}: the file '{entry}' has the name of the built-in motion '{name}'; rename it")
        if name in motions:
            raise ValueError(
                f"{where}: '{entry}' and '{motions[name]}' are both named '{name}' (their videos would "
                f"collide); rename one file"
            )
        motions[name] = f"results/motions/{entry}.npz" if builtin else entry
    return motions


def avatar_pairs():
    """(subject, variant) pairs whose avatar is for use, animated and exported by default: not the
    ceiling or the control, which train on ground truth no user has and exist to be measured against
    (`snakemake results/S/ceiling/export` still makes theirs)."""
    return [(s, v) for s, v in subject_variant_pairs() if variant_role(v) not in REFERENCE_ROLES]


def animate_targets():
    """Animate folders of every avatar pair that lists motions (checks every motion list)."""
    for s, v in subject_variant_pairs():
        animate_motions(s, v)
    return [f"results/{s}/{v}/animate" for s, v in avatar_pairs() if animate_motions(s, v)]


def all_targets():
    targets = ["results/summary.csv", "results/summary.png"]
    targets += [f"results/{s}/overlay.mp4" for s in SUBJECTS]
    targets += [f"results/{s}/{v}/renders" for s, v in subject_variant_pairs()]
    targets += animate_targets()
    targets += [f"results/{s}/{v}/export" for s, v in avatar_pairs()]
    return targets


DEVICE = config.get("device", "auto")


def jobs_use_gpu():
    """Whether the GPU stages will run on a GPU. ``device: cuda`` or ``cpu`` says so; ``auto`` probes
    the host that runs the jobs: this one for a local run; under a cluster executor the jobs run
    elsewhere, so GPUs are requested (set ``device: cpu`` for a CPU-only cluster). Called when a
    job is scheduled: only then does the workflow know its executor (at parse time it is local)."""
    if DEVICE != "auto":
        return DEVICE == "cuda"
    return host_has_nvidia_gpu() if workflow.local_exec else True


def gpu_resource(wildcards):
    """The ``gpu`` resource of a GPU stage: 1 where it runs on a GPU (``--resources gpu=N`` caps
    them, SLURM gets --gpus), 0 on CPU hosts, where the stages then run side by side up to --cores."""
    return 1 if jobs_use_gpu() else 0


def gpu_stage_threads(wildcards):
    """CPU threads of a GPU stage: a few to feed a GPU; on a CPU one per job, so that the stages run
    side by side (they are many small tensor ops; measured: 66 ms/iteration on one thread, 150-670
    ms on two when another job shares the cores)."""
    # workflow.cores is None on a cluster (no --cores): jobs then get 8 (their --cpus-per-task)
    return max(1, min(workflow.cores or 8, 8)) if jobs_use_gpu() else 1


def device_config(stage, variant=None):
    """A GPU stage's settings with the workflow's ``device`` where the stage sets none of its own."""
    cfg = stage_config(stage, variant)
    if DEVICE != "auto":
        cfg.setdefault("device", DEVICE)
    return cfg


def _check_variants():
    for subject, spec in SUBJECTS.items():
        if subject_has_ground_truth(subject):
            continue
        needing = [v for v in spec.get("variants", []) if variant_needs_ground_truth(v)]
        if needing:
            raise ValueError(
                f"config: subjects.{subject}.variants lists {needing}, which need ground truth "
                f"(unoccluded frames, true masks) that this subject's source does not have"
            )
    for role in ("baseline", "ceiling"):
        named = [v for v in VARIANTS if variant_role(v) == role]
        if len(named) > 1:
            raise ValueError(f"config: variants {named} all have role '{role}'; at most one may")


_check_variants()
