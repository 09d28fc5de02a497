#!/usr/bin/env python
"""slotref's command line from a checkout: ``python cli.py train --task setpred`` (see ``slotref.cli``)."""

from slotref.cli import main

if __name__ == "__main__":
    main()
