"""Rule overlay: the posed body model drawn over every frame (PNGs + mp4)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.overlay import draw_overlays  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    draw_overlays(sm.input.data, sm.input.body, sm.output.frames, sm.output.video)
