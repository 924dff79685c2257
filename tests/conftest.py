"""Shared test set-up: the repository's own code on the import path."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("lab", "filter_plugins", "plugins/inventory", "plugins/module_utils"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
