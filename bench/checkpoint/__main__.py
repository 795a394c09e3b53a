"""``python -m bench.checkpoint``: see the package docstring."""
from bench.checkpoint.cli import main

raise SystemExit(main())
