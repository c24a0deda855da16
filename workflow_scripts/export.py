"""Rule export: 3DGS PLYs, SMPL parameters and cameras, and a nerfstudio dataset of the final model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.config import ExportConfig, from_dict  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.export import export_all  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    cfg = from_dict(ExportConfig, sm.params.cfg, f"variants.{sm.wildcards.variant}.export")
    export_all(sm.input.data, sm.input.model, sm.input.body, cfg, sm.output.export)
