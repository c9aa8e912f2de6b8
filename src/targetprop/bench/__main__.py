"""``python -m targetprop.bench``: the cost benchmark's command line."""
import sys

from .command import main

sys.exit(main())
