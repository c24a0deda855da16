# Inputs: the body model, a subject in the common sequence format, its validation and overlay.


rule build_body_model:
    output:
        "results/body_model/proxy_smpl.pkl",
    log:
        "results/logs/build_body_model.log",
    benchmark:
        "results/benchmarks/build_body_model.tsv"
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        grid_mm=config.get("body_model", {}).get("proxy_grid_mm", 20.0),
    script:
        "../workflow_scripts/build_body_model.py"


rule prepare_subject:
    input:
        body=body_model_file(),
        code=core_code("data", "render/mesh", "body"),
    output:
        data=directory("results/{subject}/data"),
    log:
        "results/logs/prepare_subject/{subject}.log",
    benchmark:
        "results/benchmarks/prepare_subject/{subject}.tsv"
    priority: SUBJECT_DATA_PRIORITY
    conda:
        "../envs/video.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        source=source_config,
    script:
        "../workflow_scripts/prepare_subject.py"


rule validate_subject:
    input:
        data="results/{subject}/data",
    output:
        report="results/{subject}/data_report.json",
    log:
        "results/logs/validate_subject/{subject}.log",
    benchmark:
        "results/benchmarks/validate_subject/{subject}.tsv"
    priority: SUBJECT_DATA_PRIORITY
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/validate_subject.py"


rule overlay:
    input:
        data="results/{subject}/data",
        report="results/{subject}/data_report.json",
        body=body_model_file(),
    output:
        frames=directory("results/{subject}/overlay"),
        video=report(
            "results/{subject}/overlay.mp4",
            caption="../report/overlay.rst",
            category="{subject}",
            subcategory="input",
            labels={"figure": "body overlay video"},
        ),
    log:
        "results/logs/overlay/{subject}.log",
    benchmark:
        "results/benchmarks/overlay/{subject}.tsv"
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    script:
        "../workflow_scripts/overlay.py"


rule unoccluded_data:
    input:
        data="results/{subject}/data",
        report="results/{subject}/data_report.json",
    output:
        data=directory("results/{subject}/unoccluded_data"),
    log:
        "results/logs/unoccluded_data/{subject}.log",
    benchmark:
        "results/benchmarks/unoccluded_data/{subject}.tsv"
    priority: SUBJECT_DATA_PRIORITY
    conda:
        "../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/unoccluded_data.py"
