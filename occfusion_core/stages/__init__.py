"""One function per DAG stage: input paths + a config -> output paths."""
