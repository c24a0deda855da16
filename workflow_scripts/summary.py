"""Rule summary: one table (CSV) and one plot over every subject x variant."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.runlog import run_logged  # noqa: E402
from occfusion_core.stages.summary import summarize  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0]):
    summarize(list(sm.input.metrics), sm.output.table, sm.output.plot)
