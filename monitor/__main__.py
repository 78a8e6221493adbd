"""``python -m monitor`` is the same as the ``satmon`` console script."""

from monitor.cli import main

raise SystemExit(main())
