"""``python -m efficientdet`` is the ``efficientdet`` command."""

import sys

from .cli.main import main

sys.exit(main())
