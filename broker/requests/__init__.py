"""Requests: one API write, from ACCEPTED to its final state.

Owns the request states and their one transition table (``states``) and the repair of an
accept whose queue message was lost, rebuilt from the record alone (``requeue``). The request
record itself is still in ``broker.models`` (it moves here when that module is split).
"""
