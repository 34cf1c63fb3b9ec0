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
    from sdstudio.sampling import list_samplers

    for spec in list_samplers():
        aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        print(
            f"{spec.name}{aliases}\n    schedules: Automatic={spec.default_schedule}, {', '.join(spec.schedules)}"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser("png-info", help="print the generation parameters stored in an image")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the parsed fields as JSON")
    p.set_defaults(func=_png_info)
    s = sub.add_parser("samplers", help="list samplers (A1111 names) and their schedule types")
    s.set_defaults(func=_samplers)
