"""The one exception type of the conversion library."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint folder cannot be imported or a model cannot be exported.

    The message names the file, tensor or config field that is wrong, so the CLI and the API can show
    it to the user as it is.
    """
