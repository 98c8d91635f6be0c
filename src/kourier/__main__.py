"""``python -m kourier`` is the ``kourier`` command."""

import sys

from kourier.cli import main

sys.exit(main())
