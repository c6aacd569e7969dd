"""`python -m gptjax <command> [flags]`: the `gptjax` command without the console script (gptjax/cli.py)."""

import sys

from gptjax import cli

sys.exit(cli.main())
