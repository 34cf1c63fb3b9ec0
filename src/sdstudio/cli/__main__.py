"""``python3 -m sdstudio.cli``: the same as the ``sdstudio`` command."""

import sys

from sdstudio.cli import main

sys.exit(main())
