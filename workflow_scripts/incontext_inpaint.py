"""Rule incontext_inpaint (stage 2): fill the hidden pixels of every frame."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import InpaintConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.incontext import incontext_inpaint  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(InpaintConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.incontext_inpaint")
    incontext_inpaint(sm.input.data, sm.input.renders, sm.input.body, cfg, sm.output.frames, sm.output.report,
                      stage1_model=sm.input.stage1, panel_path=sm.output.panel)
