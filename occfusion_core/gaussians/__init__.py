"""Animatable human Gaussians (GauHuman style), KNN and KL densification."""
