"""Latency under load: 8 clients against a live server on a tiny model for ``--seconds``.

Prints p50/p95 per route (progress, history, job list, submit) and the status counts. Run:
``PYTHONPATH=src:. python3 bench/reliability_load.py --seconds 60``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    from sdstudio.api import ServerSettings, create_app
    from sdstudio.models.tiny import tiny_sd1
    from tests.faults.load import run_load
    from tests.server.conftest import LiveServer

    root = Path(tempfile.mkdtemp(prefix="sdstudio-load-"))
    app = create_app(ServerSettings(outdir=root / "out", models_dir=None), models={"tiny": tiny_sd1()})
    with LiveServer(app) as live:
        report = run_load(live.url, args.seconds, clients=args.clients)
    app.state.studio.stop()
    print(report.summary())


if __name__ == "__main__":
    main()
