"""How every revvision command reports problems the user can fix.

``run(main)`` calls ``main()``; a ``backbones.errors.UserError`` escaping it is printed as
one line ``<prog>: error: <message>`` on stderr and the process exits with status 2 (the
status argparse uses for bad arguments). ``--debug`` on the command line or
``REVVISION_DEBUG=1`` in the environment lets the traceback through instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from backbones.errors import UserError

T = TypeVar("T")


def debug_requested(argv=None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("REVVISION_DEBUG", "") not in ("", "0")


def run(main: Callable[[], T], prog: str = None) -> T:
    """Run ``main()``, turning a ``UserError`` into a clean message and exit status 2."""
    try:
        return main()
    except UserError as e:
        if debug_requested():
            raise
        prog = prog or os.path.basename(sys.argv[0])
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
