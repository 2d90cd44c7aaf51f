"""pygal, imported once, without the import hook it installs.

pygal appends a legacy `sys.meta_path` finder (for its map plugins, unused here) that has
no `find_spec`: on Python 3.11 every later failed import (optional dependencies probed with
try/except, e.g. lxml by pygal itself) then raises an ImportWarning, an error under our
pytest settings. The finder is removed before anything else is imported.
"""

from __future__ import annotations

import sys

import pygal

sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "PluginImportFixer"]

from pygal.etree import etree  # noqa: E402
from pygal.style import Style  # noqa: E402

DateTimeLine = pygal.DateTimeLine

__all__ = ["DateTimeLine", "Style", "etree"]
