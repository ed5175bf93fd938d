"""The root of Tessera's own exceptions."""

from __future__ import annotations


class TesseraError(Exception):
    """Something went wrong in Tessera."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
