"""Import the application named on the command line."""

from __future__ import annotations

import importlib
from typing import Any, cast

from .pep3333 import WSGIApplication


def load_app(spec: str) -> WSGIApplication:
    """``package.module:callable`` (``:app`` by default); dotted attributes allowed after the colon."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"--app {spec!r}: expected module:callable")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--app {spec!r}: {module_name} has no attribute {attr or 'app'!r}") from None
    if not callable(obj):
        raise ValueError(f"--app {spec!r} is not callable")
    # Only calling it can show whether it takes (environ, start_response); the type says it must.
    return cast(WSGIApplication, obj)
