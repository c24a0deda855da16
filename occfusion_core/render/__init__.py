"""Cameras and rasterizers (Gaussians and triangle meshes)."""
