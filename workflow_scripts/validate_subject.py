"""Rule validate_subject: reject bad input early, naming the file and the problem."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.validate import validate_subject  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0]):
    validate_subject(sm.input.data, sm.output.report)
