"""Rule render: training frames, held-out views, 360-degree orbit and novel poses, PNG + mp4."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import RenderConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.render import render_all  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(RenderConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.render")
    render_all(sm.input.data, sm.input.model, sm.input.body, cfg, sm.output.renders)
