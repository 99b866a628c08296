"""``python -m mri2mri`` (also what ``torchrun -m mri2mri train ...`` runs)."""

import sys

from mri2mri.cli import main

sys.exit(main())
