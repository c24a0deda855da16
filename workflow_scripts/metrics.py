"""Rule metrics: PSNR / SSIM / LPIPS under four protocols, each recorded beside its number."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import MetricsConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.metrics import compute_metrics  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(MetricsConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.metrics")
    compute_metrics(
        sm.input.data, sm.input.model, sm.input.body, cfg, sm.output.metrics,
        subject=sm.wildcards.subject, variant=sm.wildcards.variant,
        variant_config=sm.params.variant_config, stage_reports=list(sm.input.reports), role=sm.params.role,
    )
