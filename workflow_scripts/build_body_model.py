"""Rule build_body_model: write the proxy body in SMPL's file format."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake injects it)
from occfusion_core.body.proxy import write_proxy_smpl  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402

with run_logged(snakemake.log[0]):  # noqa: F821
    write_proxy_smpl(snakemake.output[0], grid_mm=snakemake.params.grid_mm)  # noqa: F821
