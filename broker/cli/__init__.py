"""The ``hpcb`` command line (see broker/cli/main.py)."""
