"""Rule builtin_motion: a procedural motion of occfusion_core.data.motion as an AMASS-style .npz
(z up, feet on z = 0), read back like any user's motion file."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.body.model import load_body_model  # noqa: E402
from occfusion_core.data.motion import builtin_motion_clip  # noqa: E402
from occfusion_core.data.motion_files import write_motion  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    clip = builtin_motion_clip(sm.wildcards.motion, load_body_model(sm.input.body))
    write_motion(sm.output.motion, clip, up_axis="z")
