"""``sdstudio lab study word-order|separators|punctuation|custom``: paired prompt studies with CIs."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from sdstudio.cli.common import add_model_args, load_model_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "study",
        help="prompt study: variants x N shared seeds, paired-bootstrap CIs, offline HTML report + JSON",
    )
    p.add_argument("kind", choices=("word-order", "separators", "punctuation", "custom"))
    p.add_argument("--a", default="girl", help="first concept (word-order/separators/punctuation)")
    p.add_argument("--b", default="boy", help="second concept")
    p.add_argument("--variants", nargs="+", default=None, help="custom: the prompts (first = base)")
    p.add_argument("--concepts", action="store_true", help="custom: measure dominance of --a vs --b")
    p.add_argument("--seeds", type=int, default=32, help="number of seeds shared by every variant")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", default="DPM++ 2M")
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--batch", type=int, default=8, help="images per batch (consecutive seeds)")
    p.add_argument(
        "--clip", default=None, help="CLIP folder for embeddings (default: the embedded mini-CLIP)"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default studies/<kind>)")
    add_model_args(p)
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from sdstudio.lab.judge import load_judge
    from sdstudio.lab.study import make_spec, run_study

    out = args.out or Path("studies") / args.kind
    spec = make_spec(
        args.kind, args.a, args.b, args.variants, seeds=args.seeds, first_seed=args.first_seed, steps=args.steps,
        sampler=args.sampler, cfg_scale=args.cfg_scale, negative_prompt=args.negative_prompt, batch=args.batch,
        command=" ".join(["sdstudio", *map(shlex.quote, sys.argv[1:])]) if sys.argv[1:2] == ["lab"] else "",
        **({"with_concepts": args.concepts} if args.kind == "custom" else {}),
    )  # fmt: skip
    model = load_model_from_args(args)
    judge = load_judge(args.clip)
    t0 = time.perf_counter()

    def progress(done: int, total: int, what: str) -> None:
        print(f"[{done}/{total}] {time.perf_counter() - t0:.0f}s {what}", flush=True)

    data = run_study(model, spec, out, judge, progress)
    from sdstudio.lab.report import findings

    for line in findings(data):
        print(line)
    print(f"wrote {out / 'report.html'} and {out / 'study.json'} ({data['timing']['total_s']} s)")
    return 0
