"""Run a study: ``python run_study.py --space latent.yaml`` (see docs/running.md).

The command line lives in study/cli.py (also installed as ``ae4ad-study``).
"""

import sys

from study.cli import main

if __name__ == "__main__":
    sys.exit(main())
