"""Rule complete_masks (stage 0): complete person masks for every frame."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import MaskCompletionConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.masks import complete_masks  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(MaskCompletionConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.complete_masks")
    complete_masks(sm.input.data, sm.input.body, cfg, sm.output.masks, sm.output.report,
                   panel_path=sm.output.panel)
