"""Body models: SMPL through smplx, or the generated proxy body in SMPL's format; OpenPose joints."""
