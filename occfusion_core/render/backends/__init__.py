"""Rasterizer backends chosen by name (see occfusion_core.render.rasterize)."""
