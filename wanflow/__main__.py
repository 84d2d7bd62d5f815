"""`python -m wanflow` is the same as the `wanflow` command."""

import sys

from wanflow.cli import main

sys.exit(main())
