"""``python -m broker.cli``: the same as the ``hpcb`` console script."""

from broker.cli.main import main

main()
