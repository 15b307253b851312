"""Import the application named on the command line."""

from __future__ import annotations

import importlib
import sys
from typing import Any, cast

from .pep3333 import WSGIApplication


def load_app(spec: str) -> WSGIApplication:
    """``package.module:callable`` (``:app`` by default); dotted attributes allowed after the colon.

    A module that cannot be found is reported with the directories searched, so a
    wrong working directory (or a missing ``--chdir``) shows at once; a module that
    is found but fails to import one of its own dependencies keeps Python's message.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"--app {spec!r}: expected module:callable")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            where = ", ".join(path or "." for path in sys.path)
            raise ValueError(f"--app {spec!r}: no module named {missing!r} in the current directory or on "
                             f"sys.path ({where}); use --chdir DIR to import it from DIR") from None
        raise
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
