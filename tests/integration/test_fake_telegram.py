"""The fake Bot API, checked with the real python-telegram-bot: it must read every answer as it
reads Telegram's (results as its types, errors as its exceptions)."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters, Update
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter
from telegram.ext import AIORateLimiter, Application, CommandHandler, ContextTypes

from tests.fake_telegram import MB, FakeTelegram, serve

# python-telegram-bot 22 warns on each RetryAfter unless opted in to timedelta durations (as bots.telegram does).
os.environ.setdefault("PTB_TIMEDELTA", "true")


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x40" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeTelegram, str]]:
    fake = FakeTelegram()
    async with serve(fake) as url:
        yield fake, url


def bot_for(url: str, token: str) -> Bot:
    return Bot(token, base_url=f"{url}/bot", base_file_url=f"{url}/file/bot")


async def test_an_application_receives_start_and_answers_in_the_chat(telegram: tuple[FakeTelegram, str]) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_test_bot")
    fake.user(501, "Ada")

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("Welcome, Ada")

    app = (
        Application.builder()
        .token(token)
        .base_url(f"{url}/bot")
        .base_file_url(f"{url}/file/bot")
        .rate_limiter(AIORateLimiter())
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=5)
        fake.user_says(token, 501, "/start")
        answer = await fake.wait_for(lambda: next(iter(fake.messages(501, from_bot=True)), None), 10)
        await app.updater.stop()
        await app.stop()
    assert answer.text == "Welcome, Ada" and answer.reply_to is None
    assert [m.text for m in fake.messages(501)] == ["/start", "Welcome, Ada"]
    assert "deleteWebhook" in [c.method for c in fake.calls]
    assert not fake.bots[token].updates  # confirmed by the offset of a later getUpdates


async def test_errors_come_back_as_the_library_raises_telegrams_own(telegram: tuple[FakeTelegram, str]) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_test_bot")
    fake.user(502)
    async with bot_for(url, token) as bot:
        assert (await bot.get_me()).username == "tessera_test_bot"
        fake.too_many_requests("sendMessage", 7)
        with pytest.raises(RetryAfter) as retry:
            await bot.send_message(502, "hi")
        assert retry.value.retry_after.total_seconds() == 7
        sent = await bot.send_message(502, "hi")
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await bot.edit_message_text("hi", chat_id=502, message_id=sent.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
            await bot.edit_message_text("hey", chat_id=502, message_id=99)
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_message(12345, "anyone?")
        fake.block(502)
        with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
            await bot.send_message(502, "still there?")
    with pytest.raises(InvalidToken):
        async with bot_for(url, "999:not-a-bot"):
            pass


async def test_a_keyboard_goes_with_each_edit_or_it_is_gone(telegram: tuple[FakeTelegram, str]) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_test_bot")
    fake.user(503)
    fake.group(-100, "fans")
    asked = fake.user_says(token, -100, "/image a cat", user_id=503)
    cancel = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="cancel:1")]])
    async with bot_for(url, token) as bot:
        sent = await bot.send_message(
            -100, "queued", reply_parameters=ReplyParameters(asked.message_id), reply_markup=cancel
        )
        assert sent.reply_to_message is not None and sent.reply_to_message.message_id == asked.message_id
        await bot.edit_message_text("running 50%", chat_id=-100, message_id=sent.message_id, reply_markup=cancel)
        shown = fake.messages(-100, from_bot=True)[0]
        assert shown.buttons == [("Cancel", "cancel:1")] and shown.edits == ["queued"]
        query_id = fake.press(token, shown, "cancel:1", user_id=503)
        (update,) = await bot.get_updates(offset=-1)
        assert update.callback_query is not None and update.callback_query.data == "cancel:1"
        # The same text without the keyboard is a change: the keyboard goes.
        await bot.edit_message_text("running 50%", chat_id=-100, message_id=sent.message_id)
        assert shown.buttons == [] and shown.text == "running 50%"
        assert await bot.answer_callback_query(query_id, text="Cancelled")
        with pytest.raises(BadRequest, match=r"(?i)query is too old"):
            await bot.answer_callback_query(query_id)


async def test_uploads_are_kept_and_limits_refused_as_telegram_refuses_them(
    telegram: tuple[FakeTelegram, str],
) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_test_bot")
    fake.user(504)
    image = png(64, 48)
    async with bot_for(url, token) as bot:
        photo = await bot.send_photo(504, image, caption="a cat", filename="cat.png")
        assert (photo.photo[-1].width, photo.photo[-1].height) == (64, 48)
        document = await bot.send_document(504, b"not an image", filename="notes.txt")
        assert document.document is not None and document.document.file_name == "notes.txt"
        file = await bot.get_file(photo.photo[-1].file_id)
        assert bytes(await file.download_as_bytearray()) == image
        with pytest.raises(BadRequest, match=r"(?i)image_process_failed"):
            await bot.send_photo(504, b"not an image")
        with pytest.raises(BadRequest, match=r"(?i)photo_invalid_dimensions"):
            await bot.send_photo(504, png(9000, 2000))
        with pytest.raises(NetworkError, match="Request Entity Too Large"):
            await bot.send_document(504, b"\0" * (50 * MB + 1), filename="huge.bin")
    shown = fake.messages(504, from_bot=True)
    assert [m.kind for m in shown] == ["photo", "document"] and shown[0].file is not None
    assert shown[0].file.data == image and shown[0].caption == "a cat"


async def test_a_second_poller_ends_the_first_with_a_conflict(telegram: tuple[FakeTelegram, str]) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_test_bot")
    fake.user(505)
    async with bot_for(url, token) as first, bot_for(url, token) as second:
        waiting = asyncio.create_task(first.get_updates(timeout=5, read_timeout=10))
        await asyncio.sleep(0.3)
        polling = asyncio.create_task(second.get_updates(timeout=5, read_timeout=10))
        with pytest.raises(Conflict, match=r"(?i)terminated by other getUpdates request"):
            await waiting
        fake.user_says(token, 505, "hello")
        updates = await polling
        assert [u.message.text for u in updates if u.message] == ["hello"]
        again = await second.get_updates(offset=updates[-1].update_id + 1, timeout=0)
        assert again == ()


async def test_a_group_takes_twenty_messages_a_minute_from_a_bot(telegram: tuple[FakeTelegram, str]) -> None:
    fake, url = telegram
    token = fake.add_bot("tessera_test_bot")
    fake.group(-200)
    async with bot_for(url, token) as bot:
        for n in range(20):
            await bot.send_message(-200, f"n{n}")
        with pytest.raises(RetryAfter) as retry:
            await bot.send_message(-200, "one too many")
    assert 1 <= retry.value.retry_after.total_seconds() <= 60
