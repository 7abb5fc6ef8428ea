"""``python -m lorabench.pack``: the process a sweep starts for a pack (``lorabench.pack.run.main``)."""

from .run import main

raise SystemExit(main())
