"""``python -m herd`` behaves exactly like the ``herd`` console script."""

from herd.cli import main

raise SystemExit(main())
