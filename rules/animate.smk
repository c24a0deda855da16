# The final avatar driven by any motion: built-in motions the workflow writes (results/motions/) and
# AMASS-style .npz files, from the training camera and an orbiting one (docs/motions.md). Helpers:
# animate_config, animate_motions in rules/common.smk.


rule builtin_motion:
    input:
        body=body_model_file(),
        code=core_code("data/motion", "data/motion_files"),
    output:
        motion="results/motions/{motion}.npz",
    log:
        "results/logs/builtin_motion/{motion}.log",
    benchmark:
        "results/benchmarks/builtin_motion/{motion}.tsv"
    wildcard_constraints:
        motion=wildcard_pattern(BUILTIN_MOTIONS),
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=5,
    script:
        "../workflow_scripts/builtin_motion.py"


rule animate:
    input:
        data="results/{subject}/data",
        model=final_model,
        body=body_model_file(),
        motions=lambda wc: list(animate_motions(wc.subject, wc.variant).values()),
        code=core_code(
            "stages/animate", "stages/render", "stages/trained_model", "data/motion_files", "gaussians", "render"
        ),
    output:
        animations=report(
            directory("results/{subject}/{variant}/animate"),
            patterns=["{file}.mp4"],
            caption="../report/animate.rst",
            category="{subject}",
            subcategory="{variant}",
            labels=animate_labels,
        ),
    log:
        "results/logs/animate/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/animate/{subject}.{variant}.tsv"
    conda:
        "../envs/core.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda wc: animate_config(wc.subject, wc.variant),
        names=lambda wc: list(animate_motions(wc.subject, wc.variant)),
    script:
        "../workflow_scripts/animate.py"
