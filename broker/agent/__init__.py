"""The head-node agent (``hpcb_agent.py``, stdlib only) and the worker side of its protocol."""
