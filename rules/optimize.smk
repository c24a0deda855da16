# Stage 1: fit animatable human Gaussians to the frames (resumes from its last checkpoint).


rule optimize:
    input:
        data=training_data,
        report="results/{subject}/data_report.json",
        body=body_model_file(),
        masks=stage0_masks,
        code=core_code("stages/optimize", "stages/training", "gaussians", "render", "losses"),
    output:
        model="results/{subject}/{variant}/stage1/model.pt",
        renders=directory("results/{subject}/{variant}/stage1/renders"),
    log:
        "results/logs/optimize/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/optimize/{subject}.{variant}.tsv"
    priority: training_stages_after("optimize")
    conda:
        "../envs/diffusion.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=8000,
        runtime=120,
    params:
        cfg=lambda wc: device_config("optimize", wc.variant),
        checkpoints="results/{subject}/{variant}/stage1/checkpoints",
    script:
        "../workflow_scripts/optimize.py"
