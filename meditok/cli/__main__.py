"""``python -m meditok.cli`` (and ``torchrun -m meditok.cli train ...``)."""
import sys

from meditok.cli import main

sys.exit(main())
