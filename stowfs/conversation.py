"""The decoded conversation model: what a parser makes of a file and what views render.

Parsers (stowfs.formats) build these from parsed JSON / text; views (stowfs.views) render
them. Nothing here knows about storage or FUSE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# Part kinds
TEXT = "text"              # plain text (message content, text block)
TOKENS = "tokens"          # pre-tokenized content: list of token ids
THINKING = "thinking"      # model reasoning text
TOOL_CALL = "tool_call"    # the model asks a tool to run: name + arguments
TOOL_RESULT = "tool_result"  # what the tool returned
IMAGE = "image"            # image (inline base64 or URL reference)
BLOB = "blob"              # any other non-text attachment

# Roles are normalised to these where the format makes it clear; unknown roles are kept as given.
SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"


@dataclass
class Part:
    kind: str
    text: Optional[str] = None          # TEXT / THINKING / TOOL_RESULT text; TOOL_CALL args as JSON text
    tokens: Optional[list[int]] = None  # TOKENS
    name: Optional[str] = None          # TOOL_CALL / TOOL_RESULT tool name
    call_id: Optional[str] = None       # TOOL_CALL id / TOOL_RESULT tool_use_id / tool_call_id
    is_error: bool = False              # TOOL_RESULT flagged as an error
    media_type: Optional[str] = None    # IMAGE / BLOB
    ref: Optional[str] = None           # IMAGE / BLOB: URL, or a short description of inline data


@dataclass
class Message:
    role: str
    parts: list[Part] = field(default_factory=list)
    name: Optional[str] = None
    timestamp: Optional[str] = None     # ISO 8601 when the format has one
    model: Optional[str] = None
    event: bool = False                 # a log line of the app (a command's output, a compaction
                                        # summary), not a prompt: its text is no system prompt
    label: Optional[str] = None         # what the message is in its file beyond its role:
                                        # "chosen" / "rejected" (preference data), "queued" (typed
                                        # while the agent was busy), an attachment's kind
    sidechain: Optional[str] = None     # set on the messages of a nested thread (a subagent run
                                        # from a Task call): the thread's label; consecutive
                                        # messages with the same label form one nested block


@dataclass
class Conversation:
    messages: list[Message] = field(default_factory=list)
    id: Optional[str] = None
    model: Optional[str] = None         # main model (most used)
    application: Optional[str] = None   # e.g. "claude-code", "codex-cli", "gemini-cli", "openai", "anthropic", "sharegpt", "aider"
    started: Optional[str] = None       # ISO timestamp of the first message/event, if known
    ended: Optional[str] = None
    usage: dict[str, int] = field(default_factory=dict)  # summed token usage when present
    metadata: dict[str, Any] = field(default_factory=dict)
    title: Optional[str] = None         # the conversation's title where the format has one


PARTIAL = "partial text view: "         # how Parsed.issue starts for a partial conversation


@dataclass
class Parsed:
    """What a parser made of one file."""
    format: str                          # e.g. "claude-code-jsonl", "openai-chat", "sharegpt", "opaque"
    conversations: list[Conversation] = field(default_factory=list)
    error: Optional[str] = None          # why the file is not a conversation (format == "opaque")
    # Text formats only (e.g. aider Markdown): byte ranges (start, end, role) of message bodies
    # in the original file, so the store can keep each message as its own segment.
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    # A conversation whose text view is known to lack some of the file's content (a shape
    # the parser recognises only in part): why, in one line. The file still has its text
    # view; `issue` reports it in `stowfs ls --errors` and errors/.
    partial: Optional[str] = None

    @property
    def is_conversation(self) -> bool:
        return self.error is None and bool(self.conversations)

    @property
    def issue(self) -> Optional[str]:
        """What errors/ says about the file: why it is not a conversation, or what its text
        view lacks; None when it is a conversation rendered in full."""
        if self.error is not None:
            return self.error
        if self.partial is not None:
            return PARTIAL + self.partial
        return None

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.conversations:
            if c.model:
                seen.setdefault(c.model)
            for m in c.messages:
                if m.model:
                    seen.setdefault(m.model)
        return list(seen)

    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.conversations)
