"""``python -m slotref``: the command line (``slotref.cli``)."""

from slotref.cli import main

main(prog_name="slotref")
