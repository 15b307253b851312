"""``--reload``: notice that the application's source changed, by polling modification times (stdlib only).

Which files: the master never imports the application (the workers do, so that
a reload imports it afresh), so it locates the module the way the import system
would, without running it: ``PathFinder`` walks ``sys.path`` and the packages'
search paths for ``package.module`` without executing any ``__init__``. A
package, or the package a module is in, is watched recursively (every ``.py``
below it); a top-level module with the ``.py`` files next to it, since those
are what it usually imports.

Polling a few dozen ``stat`` calls a second costs nothing measurable and needs
no inotify binding; the trade-off is up to one interval of delay. A change is
reported once the files have been quiet for one more poll, so an editor that
writes a file in several steps causes one reload, not two.
"""

from __future__ import annotations

import os
from importlib.machinery import PathFinder
from pathlib import Path

from .. import errorlog

POLL_EVERY = 0.5  # seconds


def source_root(module: str) -> tuple[Path, bool] | None:
    """(path, is_package) of a dotted module name, found without importing it; None when not found on sys.path."""
    search: list[str] | None = None
    spec = None
    parts = module.split(".")
    for depth in range(len(parts)):
        name = ".".join(parts[:depth + 1])
        spec = PathFinder.find_spec(name, search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
        if depth < len(parts) - 1 and not search:
            return None  # a module where a package was expected
    assert spec is not None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))), True
    if spec.origin is None:
        return None
    return Path(spec.origin).parent, len(parts) > 1  # a module in a package: that package, recursively


class SourceWatcher:
    """Modification times of the watched ``.py`` files; ``poll`` says when they changed."""

    def __init__(self, app_spec: str) -> None:
        module = app_spec.partition(":")[0]
        found = source_root(module) if module else None
        if found is None:
            errorlog.warning("--reload: cannot find the source of %r on sys.path; nothing to watch", module)
            self.root, self.recursive = None, False
        else:
            self.root, self.recursive = found
        self._seen = self._scan()
        self._changed: str | None = None

    def _scan(self) -> dict[str, tuple[int, int]]:
        if self.root is None:
            return {}
        stamps: dict[str, tuple[int, int]] = {}
        if self.recursive:
            for directory, subdirs, files in os.walk(self.root):
                subdirs[:] = [d for d in subdirs if d != "__pycache__" and not d.startswith(".")]
                for name in files:
                    if name.endswith(".py"):
                        self._stat(os.path.join(directory, name), stamps)
        else:
            try:
                names = os.listdir(self.root)
            except OSError:
                return {}
            for name in names:
                if name.endswith(".py"):
                    self._stat(os.path.join(self.root, name), stamps)
        return stamps

    @staticmethod
    def _stat(path: str, stamps: dict[str, tuple[int, int]]) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return  # removed between listing and stat: the next poll sees it gone
        stamps[path] = (st.st_mtime_ns, st.st_size)

    def poll(self) -> str | None:
        """A changed file's path once the change has settled (one quiet poll), else None."""
        current = self._scan()
        if current == self._seen:
            changed, self._changed = self._changed, None
            return changed
        differing = {p for p in current.keys() | self._seen.keys() if current.get(p) != self._seen.get(p)}
        self._changed = min(differing)
        self._seen = current
        return None
