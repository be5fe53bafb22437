"""``python -m efficientdet`` is the ``efficientdet`` command."""

import sys

from .cli import main

sys.exit(main())
