"""Dialogue: open-domain chats between two people (``chitchat-dataset==0.9.0``, MIT).

Each chat is rendered one message per line, ``A:`` for whoever wrote first and ``B:`` for
the other (``C:``... if more joined); the real sender ids are UUIDs and say nothing. Chats
shorter than 200 characters (mostly a lone "hi") are dropped: 3,846 chats are kept.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acodm.data.corpus import Document
from acodm.data.sources.archive import read_member
from acodm.data.sources.base import Source, SourceOptions
from acodm.errors import CorpusError

PACKAGE = "chitchat-dataset==0.9.0"
DATASET = "chitchat_dataset/dataset.json"
MIN_CHARS = 200


def render_chat(chat: dict[str, Any]) -> str:
    """``A: ...`` / ``B: ...`` lines, one per message, in order."""
    speakers: dict[str, str] = {}
    lines = []
    for turn in chat.get("messages") or []:
        for message in turn:
            sender = str(message.get("sender"))
            speaker = speakers.setdefault(sender, string.ascii_uppercase[len(speakers) % 26])
            text = " ".join(str(message.get("text") or "").split())
            if text:
                lines.append(f"{speaker}: {text}")
    return "\n".join(lines)


def extract(archive: Path | None, options: SourceOptions) -> Iterator[Document]:
    assert archive is not None
    chats = json.loads(read_member(archive, DATASET))
    if not isinstance(chats, dict):
        raise CorpusError(f"{DATASET} in {archive} is not a chat id -> chat mapping")
    for chat_id, chat in chats.items():
        text = render_chat(chat)
        if len(text) >= MIN_CHARS:
            meta = {"prompt": chat["prompt"]} if chat.get("prompt") else None
            yield Document(text, "dialogue", PACKAGE, f"dialogue/{PACKAGE}/{chat_id}", meta)


CHITCHAT = Source("dialogue", "chitchat", PACKAGE, extract, package=PACKAGE)
SOURCES = (CHITCHAT,)
