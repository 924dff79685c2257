"""Module baton_lock, run in the controller's process (baton_inprocess.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baton_inprocess import action_for

ActionModule = action_for("baton_lock")
