"""`python -m reconciler.cli`, as the p4kube console script."""

import sys

from . import main

sys.exit(main())
