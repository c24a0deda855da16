# Stage 0: complete person masks (diffusion inpainting + SAM-HQ, or the body-silhouette method).


rule complete_masks:
    input:
        data="results/{subject}/data",
        report="results/{subject}/data_report.json",
        body=body_model_file(),
        code=core_code("stages/masks", "priors", "render/mesh", "figures"),
    output:
        masks=directory("results/{subject}/{variant}/stage0/masks"),
        report="results/{subject}/{variant}/stage0/report.json",
        panel=report(
            "results/{subject}/{variant}/stage0/panel.png",
            caption="../report/stage0_panel.rst",
            category="{subject}",
            subcategory="{variant}",
            labels={"figure": "stage 0 panel: completed masks"},
        ),
    log:
        "results/logs/complete_masks/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/complete_masks/{subject}.{variant}.tsv"
    priority: training_stages_after("complete_masks")
    conda:
        "../envs/segmentation.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=12000,
        runtime=60,
    params:
        cfg=lambda wc: device_config("complete_masks", wc.variant),
    script:
        "../workflow_scripts/complete_masks.py"
