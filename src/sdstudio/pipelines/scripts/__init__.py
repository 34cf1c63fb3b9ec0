"""A1111's built-in scripts as plain functions over a runner: X/Y/Z plot, prompt matrix, SD upscale.

Each script takes a *runner* ``run(request, *, init_images=None, model=None) -> list[GeneratedImage]``
(the one path that makes images; the CLI, the server's job worker and the lab pass their own) and
returns a :class:`~sdstudio.pipelines.scripts.grid.ScriptResult`: the images in A1111's response
order (grids first), each flagged as grid or cell. Scripts never load models or touch a queue.
"""

from sdstudio.pipelines.scripts.grid import Runner, ScriptImage, ScriptResult
from sdstudio.pipelines.scripts.registry import SCRIPTS, run_api_script, script_names

__all__ = ["SCRIPTS", "Runner", "ScriptImage", "ScriptResult", "run_api_script", "script_names"]
