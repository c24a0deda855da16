"""Rule unoccluded_data: a ceiling's training frames (the unoccluded frames and full masks)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
from occfusion_core.data.sequence import write_unoccluded_sequence  # noqa: E402
from occfusion_core.io import atomic_dir  # noqa: E402
from occfusion_core.runlog import run_logged  # noqa: E402

sm = snakemake  # noqa: F821
with run_logged(sm.log[0]), atomic_dir(sm.output.data) as tmp:
    write_unoccluded_sequence(sm.input.data, tmp)
