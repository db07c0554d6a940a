"""Notifications: what subscribers of the SNS topic receive, published once.

Owns the versioned events and their message attributes (``events``) and the announcers that
publish a record's pending event and then mark it published (``announcer``).
"""
