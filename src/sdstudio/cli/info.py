"""``sdstudio png-info FILE`` and ``sdstudio samplers``."""

from __future__ import annotations

import json


def _png_info(args) -> int:
    from sdstudio.errors import SDStudioError
    from sdstudio.infotext import parse_infotext
    from sdstudio.runtime.outputs import read_infotext

    text = read_infotext(args.file)
    if not text:
        raise SDStudioError(f"{args.file} carries no generation parameters")
    fields = parse_infotext(text)
    if args.json:
        print(json.dumps(fields, ensure_ascii=False, indent=2))
        return 0
    print(text)
    print()
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _samplers(args) -> int:
    """The sampler table; from a running studio when one answers (no torch import here, ~0.3 s),
    else from ``sdstudio.sampling`` (which imports torch)."""
    from sdstudio.cli.remote import Remote

    remote = None if args.local or not args.server else Remote(args.server)
    if remote is not None and remote.up():
        rows = remote.call("GET", "/api/samplers")["samplers"]
    else:
        from sdstudio.sampling import list_samplers

        rows = [
            {
                "name": x.name,
                "aliases": x.aliases,
                "default_schedule": x.default_schedule,
                "schedules": x.schedules,
            }
            for x in list_samplers()
        ]
    for row in rows:
        aliases = f" (aliases: {', '.join(row['aliases'])})" if row["aliases"] else ""
        print(
            f"{row['name']}{aliases}\n    schedules: Automatic={row['default_schedule']}, {', '.join(row['schedules'])}"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser("png-info", help="print the generation parameters stored in an image")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the parsed fields as JSON")
    p.set_defaults(func=_png_info)
    s = sub.add_parser("samplers", help="list samplers (A1111 names) and their schedule types")
    from sdstudio.cli.remote import add_remote_args

    add_remote_args(s)
    s.set_defaults(func=_samplers)
