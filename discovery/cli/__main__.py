"""``python -m discovery.cli`` = the ``discovery`` command."""

import sys

from discovery.cli import main

sys.exit(main())
