# Quality figures per subject and variant, and the table over all of them.


rule metrics:
    input:
        data="results/{subject}/data",
        model=final_model,
        body=body_model_file(),
        reports=stage_reports,
        code=core_code("stages/metrics", "gaussians", "render"),
    output:
        metrics="results/{subject}/{variant}/metrics.json",
    log:
        "results/logs/metrics/{subject}.{variant}.log",
    benchmark:
        "results/benchmarks/metrics/{subject}.{variant}.tsv"
    conda:
        "../envs/core.yaml"
    threads: gpu_stage_threads
    resources:
        gpu=gpu_resource,
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda wc: device_config("metrics", wc.variant),
        variant_config=lambda wc: VARIANTS[wc.variant],
        role=lambda wc: variant_role(wc.variant),
    script:
        "../workflow_scripts/metrics.py"


rule summary:
    input:
        metrics=all_metrics(),
    output:
        table=report("results/summary.csv", category="Metrics", caption="../report/summary.rst"),
        plot=report("results/summary.png", category="Metrics", caption="../report/summary.rst"),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/summary.py"
