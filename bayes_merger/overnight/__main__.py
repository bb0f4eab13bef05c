"""``python -m bayes_merger.overnight``: the same as ``bayes-merger-overnight``."""

import sys

from bayes_merger.overnight.cli import main

sys.exit(main())
