"""``python -m dwp``: the same command-line tool as ``dwp``."""

from dwp.cli import main

raise SystemExit(main())
