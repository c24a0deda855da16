"""Rule prepare_subject: write one subject in the common sequence format."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.prepare import prepare_subject  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0], threads=sm.threads):
    prepare_subject(sm.params.source, sm.output.data, body_model_path=sm.input.body)
