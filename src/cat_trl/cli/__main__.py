"""`python -m cat_trl.cli <command> ...` == `cat-trl <command> ...`."""

import sys

from . import main

sys.exit(main())
