"""Frontends that act for their users: Telegram and Discord bots, the website.

A bot holds a frontend key (`tessera frontends create`), submits jobs over the HTTP API for the
`user_ref` it serves, and learns of results from its completion subject, `tessera.done.<frontend>.<bot>.>`,
never by polling, and of progress from `tessera.progress.<frontend>.<bot>.<job>`.

The frontend-neutral part, shared by every platform: `config` (the bots file), `options` (a
request's options as API params), `texts` (every sentence), `runtime` (`BotRuntime`, one bot's
Tessera), `progress`, `limits` (edit throttling, flood protection), `completions` (the feed),
`platform` (the protocol a platform module implements) and `service` (every bot, supervised).
The platforms: `telegram`, `discord`.
"""
