"""python -m m2det_impl.cli: the m2det command."""

import sys

from m2det_impl.cli.app import main

sys.exit(main())
