"""Rule refine (stage 3): continue the stage-1 model on the inpainted frames; resumable."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import RefineConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.refine import refine  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(RefineConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.refine")
    refine(sm.input.data, sm.input.body, sm.input.stage1, sm.input.masks, sm.input.inpainted, cfg,
           sm.output.model, sm.output.renders, sm.params.checkpoints)
