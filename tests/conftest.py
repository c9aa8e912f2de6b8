"""Fixtures and the end-of-run report for the whole suite.

pytest puts this folder on ``sys.path`` (rootdir-relative "prepend" imports: tests/ is not a
package), so test modules import the shared non-test modules here (helpers, problems,
processes, datafiles, reference, cases) by name; no test module imports another. Which tests run
on this machine (compiled loops, CUDA, Triton) is decided in helpers.py.
"""
import pytest
import torch

from helpers import WORST, require


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*what): skipped unless this machine has each of what "
                                       "('cpp', 'cuda', 'triton'; helpers.REQUIREMENTS)")


def pytest_runtest_setup(item):
    """The marks of helpers.needs, decided in one place (helpers.missing)."""
    for mark in item.iter_markers("needs"):
        require(*mark.args)


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run on one intra-op thread: small ops are faster so, and timings do not depend on
    what else the machine runs (tests that exercise threads set them themselves)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter):
    if WORST["where"]:
        terminalreporter.write_line(
            f"worst float64 relative error in exact checks: {WORST['rel']:.2e} ({WORST['where']})")
