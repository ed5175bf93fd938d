"""The NATS topology as code: every subject, stream, bucket and wire message of Tessera.

Nothing outside this package spells a `tessera.` subject by hand.
"""
