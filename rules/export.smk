# Standard exports of the final model: 3DGS PLYs (canonical and posed), SMPL parameters and cameras,
# and a nerfstudio / instant-ngp dataset of the training frames (docs/exports.md). CPU only.


rule export:
    input:
        data=training_data,
        model=final_model,
        body=body_model_file(),
        code=core_code("stages/export", "stages/trained_model", "gaussians", "render"),
    output:
        export=directory("results/{subject}/{variant}/export"),
    log:
        "results/logs/export/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/export/{subject}.{variant}.tsv"
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        cfg=lambda wc: stage_config("export", wc.variant),
    script:
        "../workflow_scripts/export.py"
