"""Rule optimize (stage 1): fit the human Gaussians; resumes from the last checkpoint."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import OptimizeConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.optimize import optimize  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(OptimizeConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.optimize")
    optimize(
        data_dir=sm.input.data,
        body_model_path=sm.input.body,
        cfg=cfg,
        out_model=sm.output.model,
        out_renders=sm.output.renders,
        checkpoint_dir=sm.params.checkpoints,
        complete_masks_dir=sm.input.masks or None,
    )
