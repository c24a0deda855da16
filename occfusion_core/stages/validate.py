"""Stage: check a subject's ``data/`` folder before any expensive job reads it."""

from __future__ import annotations

import os

from occfusion_core.data.validate import validate_sequence
from occfusion_core.io import write_json


def validate_subject(data_dir: str | os.PathLike, report_path: str | os.PathLike) -> dict:
    """Validate ``data_dir`` (images, masks, metadata and any ground truth) and write the report.

    Returns:
        The report written to ``report_path`` (see :func:`validate_sequence`).

    Raises:
        InputError: naming the bad file and the problem; ``report_path`` is then left untouched, so
            the rule that calls this produces no output.
    """
    report = validate_sequence(data_dir, check_gt=True)
    write_json(report_path, report)
    return report
