"""``python -m acodm`` runs the CLI (also the entry point for ``torchrun -m acodm``)."""

import sys

from acodm.cli import main

sys.exit(main())
