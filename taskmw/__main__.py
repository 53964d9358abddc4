"""``python -m taskmw``: the ``taskmw`` command."""

import sys

from taskmw.cli import main

sys.exit(main())
