"""Requests: one API write, from ACCEPTED to its final state.

Owns the request states and their one transition table (``states``), the repair of an accept
whose queue message was lost, rebuilt from the record alone (``requeue``), and the request
record, its public view and the job queue's message union (``models``).
"""
