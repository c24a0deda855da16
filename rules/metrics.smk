# Quality figures per subject and variant, and the table over all of them.


rule metrics:
    input:
        data="results/{subject}/data",
        model=final_model,
        body=body_model_file(),
        reports=stage_reports,
        code=core_code("stages/metrics", "stages/trained_model", "body/refine", "gaussians", "render"),
    output:
        metrics=report(
            "results/{subject}/{variant}/metrics.json",
            caption="../report/metrics.rst",
            category="{subject}",
            subcategory="{variant}",
            labels={"figure": "metrics.json"},
        ),
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
        table=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
            labels={"figure": "summary table"},
        ),
        plot=report(
            "results/summary.png",
            caption="../report/summary_plot.rst",
            category="Summary",
            labels={"figure": "summary plot"},
        ),
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
