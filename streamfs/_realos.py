"""The operating system's own functions, whatever ``install_hooks()`` did to ``os``.

``os.open`` and ``os.stat`` are ``posix.open`` and ``posix.stat`` until the hooks
replace them in ``os``; the ``posix`` module itself is never patched. streamfs's
own files (the cache's block files, materialized copies) are never hooked paths,
so reaching them through ``real`` skips the hooks' path matching.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

real: Any = importlib.import_module("nt" if os.name == "nt" else "posix")
