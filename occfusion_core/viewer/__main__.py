"""``python -m occfusion_core.viewer results/<subject>/<variant>`` (docs/viewer.md)."""

from occfusion_core.viewer.app import main

raise SystemExit(main())
