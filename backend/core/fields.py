"""The bounded field types every input goes through (issue 26): REST bodies, query and form
fields, the spec and mixture models, so no route accepts what another refuses. A value
outside its bound is the client's error (422 naming the field), never work without end or a 500.

Strings carry no NUL or other control characters (the operating system refuses a NUL in a path
with an exception, a terminal or a log line misreads the others) and have a length bound; server
paths are absolute (a relative one would resolve against the API process's working folder)."""

from __future__ import annotations

import os
import unicodedata
from typing import Annotated

from annotated_types import Interval, MaxLen, MinLen
from pydantic import AfterValidator

#: the database's INTEGER: an id or count beyond it is the client's error (422), not a 500
MAX_ID = 2**31 - 1
#: tiles per image: InternVL's dynamic tiling goes to 40 (the 6B/26B recipes), 12 by default
MAX_TILES = 40
#: tokens per sample (max_seq_length): what training accepts, so a dataset check cannot promise more
MIN_SEQ_LENGTH, MAX_SEQ_LENGTH = 64, 131_072
#: a name (dataset, model, mixture entry, preset, benchmark, checkpoint)
MAX_NAME = 200
#: a path on the server or inside a dataset / run folder (Linux PATH_MAX)
MAX_PATH = 4096
#: entries of a list in one request: datasets of a mixture, models of an evaluation, chat turns
MAX_ITEMS = 256
#: one component of an uploaded file's name, in UTF-8 bytes (Linux NAME_MAX)
MAX_FILE_NAME_BYTES = 255


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name or a path (None: it can)."""
    if "\x00" in value:
        return "must not contain a NUL character"
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        return f"must not contain control characters ({bad!r})"
    return None


def _plain_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _absolute(value: str) -> str:
    _plain_text(value)
    if not os.path.isabs(value):
        raise ValueError(f"{value[:200]!r} is relative: give the absolute path of the folder on the server")
    return value


def file_name_problem(name: str) -> str | None:
    """Why ``name`` (an uploaded file's relative name, '/'-separated) cannot be stored."""
    problem = text_problem(name)
    if problem:
        return problem
    if len(name.encode()) > MAX_PATH:
        return f"is longer than {MAX_PATH} bytes"
    long = next((p for p in name.split("/") if len(p.encode()) > MAX_FILE_NAME_BYTES), None)
    if long is not None:
        return f"has a part of {len(long.encode())} bytes ({long[:40]}...); at most {MAX_FILE_NAME_BYTES}"
    return None


DbId = Annotated[int, Interval(ge=1, le=MAX_ID)]
Count = Annotated[int, Interval(ge=0, le=MAX_ID)]  # offsets, cursors, limits
Tiles = Annotated[int, Interval(ge=1, le=MAX_TILES)]  # max_dynamic_patch, min_dynamic_patch
SeqLength = Annotated[int, Interval(ge=MIN_SEQ_LENGTH, le=MAX_SEQ_LENGTH)]  # max_seq_length
Name = Annotated[str, MinLen(1), MaxLen(MAX_NAME), AfterValidator(_plain_text)]
#: a relative path inside a folder, or absolute: a download's path, an annotation under its root
PathText = Annotated[str, MinLen(1), MaxLen(MAX_PATH), AfterValidator(_plain_text)]
#: an absolute path on the server (then checked against VLSTUDIO_DATA_ROOTS)
ServerPath = Annotated[str, MinLen(1), MaxLen(MAX_PATH), AfterValidator(_absolute)]
