"""``sdstudio data``: build training sets (``data emoji OUT``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add ``data emoji`` to the CLI."""
    parser = subparsers.add_parser("data", help="build training data sets")
    sub = parser.add_subparsers(dest="data_command", metavar="SET", required=True)
    emoji = sub.add_parser(
        "emoji",
        help="Noto emoji 64x64 on white with captions (npm: emoji-datasource-google, emojilib)",
    )
    emoji.add_argument("out", type=Path, help="output folder (images/, captions.jsonl, LICENSES.txt)")
    emoji.add_argument(
        "--node-modules", type=Path, default=None, help="use an existing npm install instead of installing"
    )
    emoji.set_defaults(func=_emoji)


def _emoji(args: argparse.Namespace) -> int:
    from sdstudio.training.emoji_data import build_emoji_dataset

    n = build_emoji_dataset(args.out, args.node_modules)
    print(f"wrote {n} images and captions.jsonl to {args.out}")
    return 0
