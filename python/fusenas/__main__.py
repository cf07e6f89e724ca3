"""``python -m fusenas``: the ``fusenas`` command line (see fusenas.cli)."""

import sys

from fusenas.cli import main

sys.exit(main())
