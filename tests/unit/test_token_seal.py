"""A Discord interaction token travels in the job sealed: the bot that sealed it opens it, another
bot's key or an altered value opens nothing, and a token from before sealing is used as it is."""

from __future__ import annotations

from bots.reply import TokenSeal

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5"


def test_the_bot_that_sealed_a_token_opens_it_and_no_other() -> None:
    mine = TokenSeal("bot-token-a")
    sealed = mine.seal(TOKEN)
    assert sealed.startswith(TokenSeal.PREFIX) and TOKEN not in sealed
    assert mine.open(sealed) == TOKEN
    assert TokenSeal("bot-token-a").open(sealed) == TOKEN  # a restarted bot with the same token
    assert TokenSeal("bot-token-b").open(sealed) is None  # a new Discord token: the window is over
    altered = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    assert mine.open(altered) is None
    assert mine.open(TokenSeal.PREFIX + "!!") is None


def test_a_plain_token_or_none_passes_through() -> None:
    assert TokenSeal("bot-token-a").open(TOKEN) == TOKEN
    assert TokenSeal("bot-token-a").open(None) is None
