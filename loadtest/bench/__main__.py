"""``python3 -m loadtest.bench``: what scripts/bench runs."""

from .main import main

raise SystemExit(main())
