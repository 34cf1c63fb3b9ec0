"""The one exception type for errors a user can cause (bad input, bad file, bad request)."""

from __future__ import annotations


class SDStudioError(ValueError):
    """A user-caused error; the message says what was wrong and what is allowed.

    The API turns it into HTTP 422 (or 400 for undecodable payloads), the CLI into a one-line
    message and exit code 2. Anything else escaping is a bug.
    """

    def __init__(self, message: str, *, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class CheckpointChangedError(SDStudioError):
    """The loaded model's checkpoint file changed on disk since it was loaded (a weights re-read no
    longer matches): the job fails, and the worker drops the model so the next job loads the file anew."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="model", status=409)
