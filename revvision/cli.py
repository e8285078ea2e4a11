"""How every revvision command reports problems the user can fix.

``run(main)`` calls ``main()``; a ``backbones.errors.UserError`` escaping it is printed as
one line ``<prog>: error: <message>`` on stderr and the process exits with status 2 (the
status argparse uses for bad arguments). ``--debug`` on the command line or
``REVVISION_DEBUG=1`` in the environment lets the traceback through instead. Any other
exception is a bug and keeps its traceback.

``train_command`` is what the train tools share: the config chosen (``--config`` or the
demo) and checked, the data and weights checked, all before ``launch`` starts any worker
process; a ``UserError`` inside a worker still ends in one message and status 2.
"""

from __future__ import annotations

import os
import sys
import time
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


def describe(error: Exception) -> str:
    """An exception's message (a ``KeyError``'s without the quotes ``str`` adds)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return str(message).strip() or type(error).__name__


def train_parser(doc: str):
    """Detectron2's training argument parser, plus ``--config`` and ``--debug``."""
    import argparse

    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(epilog=doc)
    parser.add_argument("--config", dest="config_file", default=argparse.SUPPRESS,
                        metavar="FILE", help="config file or name (same as --config-file)")
    add_debug_argument(parser)
    return parser


def add_debug_argument(parser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of errors (also: REVVISION_DEBUG=1)")


def check_weights(path: str, key: str = "MODEL.WEIGHTS", read: bool = False,
                  required: str = "") -> None:
    """A local weights file that does not exist is a ``UserError`` (URLs are not checked);
    with ``read`` (before starting several processes), so is one that cannot be loaded
    safely: ``CheckpointError``. No weights at all are fine unless ``required`` says how
    to give them."""
    if not path and required:
        raise UserError(f"no weights to run: {required}")
    if not path or "://" in path:
        return
    if not os.path.isfile(path):
        raise UserError(
            f"{key} {path}: no such file (relative paths start in {os.getcwd()}). Download the "
            f"checkpoint and give its path after the config (... {key} path/to/file), or "
            f'set {key} "" to start without weights.')
    if read and not path.endswith(".pkl"):  # Detectron2's pickles are read by revdet
        from backbones.checkpoint import load_file

        load_file(path)


def _run_worker(main: Callable, *args):
    def worker():
        try:
            return main(*args)
        except UserError:
            from detectron2.utils import comm

            if comm.get_rank() > 0:  # most problems hit every process: let rank 0 say it alone
                time.sleep(5)
            raise

    return run(worker)


def launch(main: Callable, args) -> None:
    """``detectron2.engine.launch(main, ..., args=(args,))`` for a Detectron2-style ``args``.

    A ``UserError`` in a worker process is reported there like in a single process (one
    message, status 2), and this process then exits with status 2 too, instead of showing
    the workers' tracebacks. Validate what can be validated before calling this.
    """
    from detectron2.engine import launch as detectron2_launch
    from torch.multiprocessing.spawn import ProcessExitedException

    try:
        detectron2_launch(_run_worker, args.num_gpus, num_machines=args.num_machines,
                          machine_rank=args.machine_rank, dist_url=args.dist_url,
                          args=(main, args))
    except ProcessExitedException as e:
        if e.exit_code != 2 or debug_requested():
            raise
        raise SystemExit(2) from None


def train_command(argv, parse_args: Callable, demo: str, demo_name: str, load_config: Callable,
                  check_inputs: Callable, main: Callable) -> None:
    """What ``train_det`` and ``train_video`` do: pick the config (``--config``, else the
    ``demo`` config) and say why in the first line, merge it and check the inputs in this
    process, then ``launch`` ``main``; problems the user can fix end in one message."""
    from .config_files import choose_config

    def command():
        args = parse_args(argv)
        path, why = choose_config(args.config_file, demo, f"running the {demo_name} demo")
        print(f"Config: {path} ({why})", flush=True)
        args.config_file = str(path)
        check_inputs(load_config(args), args)
        print("Command Line Args:", args, flush=True)
        launch(main, args)

    run(command)
