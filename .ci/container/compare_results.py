"""Compare two results/ folders of the same config: every metrics.json and summary.csv must be equal.

    python compare_results.py HOST_RESULTS CONTAINER_RESULTS

Values are compared as written (metrics.json rounds them to a fixed number of decimals), except wall
times (keys and columns ending in ``seconds``), which differ from run to run. Prints one line per
difference and a summary; exits 1 when anything differs or a file is missing on either side.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def leaves(value, path=""):
    """(path, value) for every non-container value of a JSON document, wall times left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not key.endswith("seconds"):
                yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(f)]


def main(host: Path, container: Path) -> int:
    problems: list[str] = []
    host_files = sorted(p.relative_to(host) for p in host.glob("*/*/metrics.json"))
    container_files = sorted(p.relative_to(container) for p in container.glob("*/*/metrics.json"))
    if host_files != container_files:
        problems.append(f"different metrics files: host {host_files}, container {container_files}")
    values = 0
    for rel in sorted(set(host_files) & set(container_files)):
        a = dict(leaves(json.loads((host / rel).read_text())))
        b = dict(leaves(json.loads((container / rel).read_text())))
        values += len(a)
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                problems.append(f"{rel} {key}: host {a.get(key)!r}, container {b.get(key)!r}")
    summary_a, summary_b = rows(host / "summary.csv"), rows(container / "summary.csv")
    if summary_a != summary_b:
        problems.append("summary.csv differs (wall times aside)")
    for line in problems:
        print(f"   {line}")
    print(
        f"   {len(host_files)} metrics.json files ({values} values) and summary.csv ({len(summary_a)} rows): "
        + ("equal" if not problems else f"{len(problems)} differences")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
