# Renders of the final model: training frames, held-out views, 360-degree orbit, novel poses (+ mp4).


rule render:
    input:
        data="results/{subject}/data",
        model=final_model,
        body=body_model_file(),
        code=core_code("stages/render", "stages/trained_model", "gaussians", "render", "figures"),
    output:
        renders=report(
            directory("results/{subject}/{variant}/renders"),
            patterns=["{file}.mp4", "{file}.html"],
            caption="../report/renders.rst",
            category="{subject}",
            subcategory="{variant}",
            labels=render_labels,
        ),
    log:
        "results/logs/render/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/render/{subject}.{variant}.tsv"
    conda:
        "../envs/core.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda wc: device_config("render", wc.variant),
    script:
        "../workflow_scripts/render.py"
