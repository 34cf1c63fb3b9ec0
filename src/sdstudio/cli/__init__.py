"""``sdstudio`` command line: one subcommand module per verb, each with ``register(subparsers)``.

Nothing here runs at import time; ``main()`` parses argv, dispatches, and turns
:class:`~sdstudio.errors.SDStudioError` into a one-line message with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sdstudio.errors import SDStudioError

# module name under sdstudio.cli -> each defines register(subparsers); missing ones are skipped
COMMAND_MODULES = ("generate", "edit", "info", "convert", "serve", "train", "data", "lab")


def build_parser() -> argparse.ArgumentParser:
    from sdstudio import __version__

    parser = argparse.ArgumentParser(prog="sdstudio", description="Local Stable Diffusion studio and lab.")
    parser.add_argument("--version", action="version", version=f"sdstudio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sdstudio.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sdstudio.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in our output
    # OpenMP threads sleep instead of spinning between kernels: the server's event loop and the worker
    # share the cores (measured: 0.054 -> 0.36 jobs/s for a polled server on 2 cores). Read by the
    # OpenMP runtime when torch is first imported, which happens after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except SDStudioError as exc:
        print(f"sdstudio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdstudio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
