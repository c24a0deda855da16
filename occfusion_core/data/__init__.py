"""Sequence format and the sources that write it (synthetic, video, OcMotion, ZJU-MoCap)."""
