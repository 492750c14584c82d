"""``python -m meditok`` is the same as the ``meditok`` command."""
import sys

from meditok.cli import main

sys.exit(main())
