"""`python -m plan`: codeparrot-plan."""

import sys

from plan.cli import main

sys.exit(main())
