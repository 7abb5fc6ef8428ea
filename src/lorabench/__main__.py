"""``python -m lorabench`` = the ``lorabench`` command."""

from .commands import main

raise SystemExit(main())
