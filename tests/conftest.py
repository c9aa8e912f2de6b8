import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from helpers import WORST  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if WORST["where"]:
        terminalreporter.write_line(
            f"worst float64 relative error in exact checks: {WORST['rel']:.2e} ({WORST['where']})")
