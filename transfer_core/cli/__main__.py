import sys

from transfer_core.cli.commands import main

sys.exit(main())
