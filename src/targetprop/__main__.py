"""``python -m targetprop``: the same command line as the ``targetprop`` entry point."""
from .cli import main

raise SystemExit(main())
