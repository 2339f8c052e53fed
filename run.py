#!/usr/bin/env python3
"""BIDS-Apps entry point (`run.py bids_dir output_dir participant`); same as `spineseg`."""

import sys

from bids_app.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
