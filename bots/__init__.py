"""Frontends that act for their users: Telegram and Discord bots, the website.

A bot holds a frontend key (`tessera frontends create`), submits jobs over the HTTP API for the
`user_ref` it serves, and learns of results from its completion subject, `tessera.done.<frontend>.<bot>.>`,
never by polling. `bots.completions.CompletionFeed` is that subscription. The Telegram and Discord
adapters themselves are not built yet.
"""
