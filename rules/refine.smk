# Stage 2: in-context inpainting of the hidden pixels; stage 3: refinement on the inpainted frames.


rule incontext_inpaint:
    input:
        data="results/{subject}/data",
        renders="results/{subject}/{variant}/stage1/renders",
        stage1="results/{subject}/{variant}/stage1/model.pt",
        body=body_model_file(),
        code=core_code("stages/incontext", "priors", "figures"),
    output:
        frames=directory("results/{subject}/{variant}/stage2/inpainted"),
        report="results/{subject}/{variant}/stage2/report.json",
        panel=report(
            "results/{subject}/{variant}/stage2/panel.png",
            caption="../report/stage2_panel.rst",
            category="{subject}",
            subcategory="{variant}",
            labels={"figure": "stage 2 panel: inpainted frames"},
        ),
    log:
        "results/logs/incontext_inpaint/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/incontext_inpaint/{subject}.{variant}.tsv"
    priority: training_stages_after("incontext_inpaint")
    conda:
        "../envs/diffusion.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=12000,
        runtime=60,
    params:
        cfg=lambda wc: device_config("incontext_inpaint", wc.variant),
    script:
        "../workflow_scripts/incontext_inpaint.py"


rule refine:
    input:
        data="results/{subject}/data",
        body=body_model_file(),
        stage1="results/{subject}/{variant}/stage1/model.pt",
        masks="results/{subject}/{variant}/stage0/masks",
        inpainted="results/{subject}/{variant}/stage2/inpainted",
        code=core_code("stages/refine", "stages/training", "gaussians", "render", "losses"),
    output:
        model="results/{subject}/{variant}/stage3/model.pt",
        renders=directory("results/{subject}/{variant}/stage3/renders"),
    log:
        "results/logs/refine/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/refine/{subject}.{variant}.tsv"
    priority: training_stages_after("refine")
    conda:
        "../envs/diffusion.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=8000,
        runtime=120,
    params:
        cfg=lambda wc: device_config("refine", wc.variant),
        checkpoints="results/{subject}/{variant}/stage3/checkpoints",
    script:
        "../workflow_scripts/refine.py"
