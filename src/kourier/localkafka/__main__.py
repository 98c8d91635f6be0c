"""``python -m kourier.localkafka``: the local broker without kourier's dependencies."""

import sys

from kourier.localkafka.commands import main

sys.exit(main())
