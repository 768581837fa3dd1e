"""`python -m attnkit info|bench ...`: the same as the `attnkit` command."""
import sys

from attnkit.cli import main

sys.exit(main())
