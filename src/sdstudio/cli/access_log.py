"""Access-log settings for ``sdstudio serve``: the web UI's polls stay out of the log.

The UI asks ``GET /api/jobs?limit=1`` every 3 seconds and follows a job through
``/api/jobs/{id}``, its preview and its event stream; A1111 clients poll ``/sdapi/v1/progress``.
Logged at INFO that is a line every few seconds for nothing. Successful polls are dropped unless the
access logger is at DEBUG; everything else (submits, errors, images) is logged as before.
``serve --quiet-access-log`` turns the access log off altogether.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

ACCESS_LOGGER = "uvicorn.access"
# GET paths that clients poll; the query string is part of uvicorn's logged path
POLLS = re.compile(r"^/(api/jobs(/[^/?]+(/(events|preview))?)?|sdapi/v1/progress)/?(\?.*)?$")


class PollFilter(logging.Filter):
    """Drop uvicorn access records of successful polls (kept when the access logger is at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:  # uvicorn: (client, method, path, http, status)
            return True
        _, method, path, _, status = args
        is_poll = method == "GET" and isinstance(status, int) and status < 400 and POLLS.match(str(path))
        return not is_poll or logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.DEBUG)


def log_config() -> dict[str, Any]:
    """uvicorn's default logging config with :class:`PollFilter` on the access handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["polls"] = {"()": PollFilter}
    config["handlers"]["access"].setdefault("filters", []).append("polls")
    return config
