"""``python -m discovery`` = the ``discovery`` command."""

import sys

from discovery.cli import main

sys.exit(main())
