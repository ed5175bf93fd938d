"""A worker node: a dumb executor that runs dispatched jobs through an engine.

It knows no users, plans or database: it announces itself, heartbeats, consumes its own
dispatch subject, and reports back as commands.
"""
