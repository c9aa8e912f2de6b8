"""``targetprop kernels build``: compile the CPU loops ahead of time (else the first layer that
needs them builds them, about a minute) and say where the build lives and which instruction set
its loops use."""
from __future__ import annotations

import sys
import time


def add_commands(sub) -> None:
    """Add ``kernels`` (``kernels build``) to the ``targetprop`` parser's sub-parsers ``sub``."""
    p = sub.add_parser("kernels", help="build the compiled CPU kernels ahead of time",
                       description="The compiled CPU loops (kernels/kernels.cpp), built once per environment "
                                   "and cached.")
    actions = p.add_subparsers(dest="kernels_command", required=True, metavar="ACTION")
    b = actions.add_parser("build", help="build (or find) the compiled loops; print where and which instruction set",
                           description="Build the compiled CPU loops now (a C++ compiler is needed; ninja comes "
                                       "with the package), or find the cached build; print its folder and the "
                                       "instruction set in use. Exit code 1 if they cannot be built.")
    b.set_defaults(handler=_build_command, subparser=b)


def _build_command(args, parser) -> int:
    import os

    from . import _build

    start = time.perf_counter()
    module, reason = _build()
    if module is None:
        print(f"{parser.prog}: error: the compiled kernels could not be built ({reason})", file=sys.stderr)
        return 1
    print(f"compiled kernels: {os.path.dirname(os.path.abspath(module.__file__))} ({time.perf_counter() - start:.1f} s)")
    print(f"instruction set: {module.isa()} (widest on this CPU: {module.widest_isa()})")
    return 0
