"""`python -m agent` runs the fl-agent command line."""

import sys

from agent.cli import main

sys.exit(main())
