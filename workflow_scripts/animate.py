"""Rule animate: the final avatar performing each configured motion, from the training camera and an
orbiting one (mp4 + summary.json)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import AnimateConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.animate import animate_avatar  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(AnimateConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.animate")
    motions = dict(zip(sm.params.names, sm.input.motions, strict=True))
    animate_avatar(sm.input.data, sm.input.model, sm.input.body, motions, cfg, sm.output.animations)
