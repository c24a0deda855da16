"""A live 3D viewer of a trained avatar in the browser (viser, https://viser.studio).

``python -m occfusion_core.viewer results/<subject>/<variant>`` (docs/viewer.md). The pure parts
(finding a result's files, posing the splats and the body mesh of a frame) are in :mod:`.scene`,
the browser UI in :mod:`.app`; only :mod:`.app` needs viser (the ``viewer`` extra).
"""
