"""Helpers shared by every JSON format: content values -> Parts, usage sums, timestamps.

`content_parts` is the one place that walks a message's content value, whatever API wrote
it: a plain string, OpenAI parts (text / image_url / input_text / output_text / refusal /
input_image / input_audio / file), Anthropic blocks (text / thinking / redacted_thinking /
tool_use / server_tool_use / mcp_tool_use / tool_result / *_tool_result / image /
document / compaction) and Gemini parts ({text} / {functionCall} / {functionResponse} /
{inlineData} / {fileData}). A list of non-negative ints is pre-tokenized content (TOKENS).

Invariant kept here and relied on by the text view: Part.text of TEXT, THINKING and
TOOL_RESULT parts is always a string value taken as is from the input (never built by us);
anything we summarise (search results, binary sizes, structured tool output) goes to
Part.ref. TOOL_CALL Part.text holds the arguments as JSON text (the original string for
OpenAI-style APIs, compact json.dumps of the input object for Anthropic/Gemini).
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

from ..conversation import (BLOB, IMAGE, TEXT, THINKING, TOKENS, TOOL_CALL, TOOL_RESULT,
                            Conversation, Message, Part)

_TEXT_TYPES = ("text", "input_text", "output_text", "summary_text", "reasoning_text")
_CALL_TYPES = ("tool_use", "server_tool_use", "mcp_tool_use")
_MAX_TOKEN_ID = 2 ** 63


def is_token_list(value: Any) -> bool:
    """True for a non-empty list of non-negative ints (not bools): pre-tokenized content."""
    if not isinstance(value, list) or not value:
        return False
    if set(map(type, value)) != {int}:
        return False
    return min(value) >= 0 and max(value) < _MAX_TOKEN_ID


def compact_json(value: Any) -> str:
    """One-line JSON for tool arguments (keys kept in input order, non-ASCII kept)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return repr(value)


def b64_size(data: Any) -> Optional[int]:
    """Decoded size of a base64 string, without decoding it."""
    if not isinstance(data, str):
        return None
    n = len(data)
    pad = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return max(0, n * 3 // 4 - pad)


# Extension -> media type, fixed here rather than read from the system's mime.types, so
# that the text view (rendered again on every read) is the same on every machine.
_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
          "webp": "image/webp", "bmp": "image/bmp", "svg": "image/svg+xml", "tif": "image/tiff",
          "tiff": "image/tiff", "heic": "image/heic", "heif": "image/heif", "ico": "image/x-icon",
          "avif": "image/avif", "pdf": "application/pdf", "txt": "text/plain",
          "md": "text/markdown", "csv": "text/csv", "json": "application/json",
          "html": "text/html", "mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg",
          "m4a": "audio/mp4", "flac": "audio/flac", "mp4": "video/mp4", "mov": "video/quicktime",
          "webm": "video/webm", "avi": "video/x-msvideo", "mkv": "video/x-matroska"}


def guess_media(ref: Any) -> Optional[str]:
    """The media type a URL's or file name's extension says ("image/png"), if any."""
    if not isinstance(ref, str) or not ref or ref.startswith("data:"):
        return None
    path = ref.split("?", 1)[0].split("#", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    return _MEDIA.get(name.rsplit(".", 1)[1].lower())


def _data_url(url: str) -> tuple[Optional[str], str]:
    """('image/png', '1234 bytes') for a data: URL, (guessed type, url) otherwise."""
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        media = head[5:].split(";", 1)[0] or None
        size = b64_size(payload) if ";base64" in head else len(payload)
        return media, f"{size} bytes"
    return guess_media(url), url


def _source_part(kind: str, source: Any, media_type: Optional[str] = None) -> Part:
    """Anthropic image/document `source` {type: base64|url|text|file, ...}."""
    if not isinstance(source, dict):
        return Part(kind=kind, media_type=media_type)
    media = source.get("media_type") or media_type
    stype = source.get("type")
    if not isinstance(media, str) or not media:
        media = guess_media(source.get("url"))
    if stype == "url":
        ref = source.get("url")
    elif stype == "file":
        ref = f"file {source.get('file_id')}"
    elif stype == "text":
        size = len(source.get("data") or "")
        ref = f"{size} chars of text"
    else:
        size = b64_size(source.get("data"))
        ref = f"{size} bytes" if size is not None else stype
    return Part(kind=kind, media_type=media if isinstance(media, str) else None,
                ref=ref if isinstance(ref, str) else None)


def result_parts(content: Any, call_id: Optional[str], name: Optional[str],
                 is_error: bool) -> list[Part]:
    """Parts for a tool result value: strings and text blocks become TOOL_RESULT parts,
    images/attachments their own parts; structured values are summarised in Part.ref."""
    if isinstance(content, str):
        return [Part(kind=TOOL_RESULT, text=content, call_id=call_id, name=name, is_error=is_error)]
    if is_token_list(content):
        return [Part(kind=TOKENS, tokens=content, call_id=call_id, name=name, is_error=is_error)]
    if isinstance(content, dict) and "type" not in content:
        content = None if not content else content
        return [Part(kind=TOOL_RESULT, ref=_summary(content), call_id=call_id, name=name,
                     is_error=is_error)]
    out: list[Part] = []
    items = content if isinstance(content, list) else [] if content is None else [content]
    summaries: list[Part] = []
    for item in items:
        if isinstance(item, str):
            out.append(Part(kind=TOOL_RESULT, text=item, call_id=call_id, name=name,
                            is_error=is_error))
        elif isinstance(item, dict) and isinstance(item.get("text"), str) \
                and item.get("type", "text") in _TEXT_TYPES:
            out.append(Part(kind=TOOL_RESULT, text=item["text"], call_id=call_id, name=name,
                            is_error=is_error))
        elif isinstance(item, dict) and isinstance(item.get("value"), str) and "text" not in item \
                and item.get("type") in ("text", "tool_result", "observation"):
            out.append(Part(kind=TOOL_RESULT, text=item["value"], call_id=call_id, name=name,
                            is_error=is_error))
        elif isinstance(item, dict) and item.get("type") in ("web_search_result",
                                                             "web_fetch_result"):
            title, url = item.get("title"), item.get("url")
            summaries.append(Part(kind=TOOL_RESULT, call_id=call_id, name=name, is_error=is_error,
                                  ref=" ".join(str(x) for x in (title, url) if x) or None))
        else:
            out.extend(block_parts(item))
    if summaries:
        return summaries + out          # one line per search result, before any text
    if not out:
        out.insert(0, Part(kind=TOOL_RESULT, ref=_summary(content), call_id=call_id, name=name,
                           is_error=is_error))
    return out


def _summary(value: Any) -> Optional[str]:
    if value is None or value == [] or value == {}:
        return None
    return compact_json(value)


def content_parts(content: Any) -> list[Part]:
    """Turn any message content value into Parts (see the module docstring)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [Part(kind=TEXT, text=content)]
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return [Part(kind=BLOB, ref=compact_json(content))]
    if is_token_list(content):
        return [Part(kind=TOKENS, tokens=content)]
    parts: list[Part] = []
    for block in content:
        parts.extend(block_parts(block))
    return parts


def block_parts(block: Any) -> list[Part]:
    """Parts for one content block / part (Anthropic, OpenAI or Gemini)."""
    if isinstance(block, str):
        return [Part(kind=TEXT, text=block)]
    if not isinstance(block, dict):
        return [Part(kind=BLOB, ref=compact_json(block))]
    t = block.get("type")
    if t is None:
        return _gemini_part(block)
    if "value" in block and "text" not in block and isinstance(t, str):
        return value_part(block)
    if t in _TEXT_TYPES:
        text = block.get("text")
        return [Part(kind=TEXT, text=text)] if isinstance(text, str) else []
    if t == "refusal":
        text = block.get("refusal")
        return [Part(kind=TEXT, text=text)] if isinstance(text, str) else []
    if t == "thinking":
        th = block.get("thinking")
        if isinstance(th, str):
            return [Part(kind=THINKING, text=th)]
        # Mistral: "thinking": [{"type": "text", "text": ...}]
        return [Part(kind=THINKING, text=p.text) for p in content_parts(th)
                if p.kind == TEXT and p.text is not None]
    if t == "think":                                              # Kimi CLI
        th = block.get("think", block.get("text"))
        if isinstance(th, str):
            return [Part(kind=THINKING, text=th)]
    if t == "redacted_thinking":
        return [Part(kind=THINKING, ref="redacted")]
    if t in _CALL_TYPES:
        return [Part(kind=TOOL_CALL, name=_str(block.get("name")), call_id=_str(block.get("id")),
                     text=compact_json(block.get("input", {})))]
    if t == "tool_result" or (isinstance(t, str) and t.endswith("_tool_result")):
        name = _str(block.get("name")) if t == "tool_result" else \
            t[: -len("_tool_result")] or None
        return result_parts(block.get("content"), _str(block.get("tool_use_id")), name,
                             block.get("is_error") is True)
    if t == "image":
        return [_source_part(IMAGE, block.get("source"))]
    if t == "document":
        return [_source_part(BLOB, block.get("source"))]
    if t == "image_url":
        iu = block.get("image_url")
        url = iu.get("url") if isinstance(iu, dict) else iu
        if isinstance(url, str):
            media, ref = _data_url(url)
            return [Part(kind=IMAGE, media_type=media, ref=ref)]
        return [Part(kind=IMAGE)]
    if t == "input_image":
        url = block.get("image_url")
        if isinstance(url, str):
            media, ref = _data_url(url)
            return [Part(kind=IMAGE, media_type=media, ref=ref)]
        return [Part(kind=IMAGE, ref=_str(block.get("file_id")))]
    if t in ("input_audio", "file", "input_file"):
        return [Part(kind=BLOB, media_type=_str(block.get("format")),
                     ref=_str(block.get("filename") or block.get("file_id") or t))]
    if t == "compaction":
        text = block.get("content")
        return [Part(kind=TEXT, text=text)] if isinstance(text, str) else []
    text = block.get("text")
    if isinstance(text, str):
        return [Part(kind=TEXT, text=text)]
    return [Part(kind=BLOB, ref=str(t))]


_VALUE_KINDS = {"text": TEXT, "reasoning": THINKING, "thinking": THINKING, "think": THINKING}


def value_part(block: dict) -> list[Part]:
    """A part spelled {"type", "value"} (LLaMA-Factory's v1 messages, several dataset
    tools): text / reasoning / tool_call or function_call (value: JSON {"name",
    "arguments"}) / tool_result or observation / image, video, audio (value: a path or URL)."""
    t, value = block["type"], block["value"]
    call_id = _str(block.get("tool_call_id") or block.get("id"))
    if t in _VALUE_KINDS:
        return [Part(kind=_VALUE_KINDS[t], text=value)] if isinstance(value, str) else \
            [Part(kind=BLOB, ref=compact_json(value))]
    if t in ("tool_call", "function_call", "tool_use"):
        return tool_calls_from_value(value, call_id)
    if t in ("tool_result", "observation", "function_response", "tool_response"):
        return result_parts(value, call_id, _str(block.get("name")), False)
    if not isinstance(value, str):
        return [Part(kind=BLOB, ref=compact_json(value))]
    if t.startswith("image"):
        media, ref = _data_url(value)
        return [Part(kind=IMAGE, media_type=media, ref=ref)]
    media, ref = _data_url(value)
    return [Part(kind=BLOB, media_type=media or t, ref=ref)]


_CALL_KEYS = {"name", "arguments", "parameters", "args", "input", "id", "type", "function",
              "call_id"}


def _named_call(obj: Any, call_id: Optional[str]) -> Optional[Part]:
    """A call object holding nothing but a name, arguments and ids (else None: kept whole)."""
    if not isinstance(obj, dict) or not obj.keys() <= _CALL_KEYS:
        return None
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    if not isinstance(fn.get("name"), str) or not fn.keys() <= _CALL_KEYS:
        return None
    args = fn.get("arguments", fn.get("parameters", fn.get("args", fn.get("input", {}))))
    return Part(kind=TOOL_CALL, name=fn["name"], call_id=call_id or _str(obj.get("id")),
                text=args if isinstance(args, str) else compact_json(args))


def tool_calls_from_value(value: Any, call_id: Optional[str] = None) -> list[Part]:
    """Tool calls given as one value: {"name", "arguments"} or a list of those, or their
    JSON text (LLaMA-Factory parts, ShareGPT function_call turns). A value that is none of
    these is kept whole, verbatim, as the arguments of an unnamed call."""
    obj = value
    if isinstance(value, str):
        try:
            obj = json.loads(value)
        except (ValueError, RecursionError):
            obj = None
    items = obj if isinstance(obj, list) and obj else [obj]
    parts = [_named_call(x, call_id if len(items) == 1 else None) for x in items]
    if all(p is not None for p in parts):
        return parts  # type: ignore[return-value]
    return [Part(kind=TOOL_CALL, call_id=call_id,
                 text=value if isinstance(value, str) else compact_json(value))]


def _gemini_part(block: dict) -> list[Part]:
    """Gemini `parts` entries (no "type" key)."""
    if isinstance(block.get("text"), str):
        kind = THINKING if block.get("thought") is True else TEXT
        return [Part(kind=kind, text=block["text"])]
    fc = block.get("functionCall")
    if isinstance(fc, dict):
        return [Part(kind=TOOL_CALL, name=_str(fc.get("name")), call_id=_str(fc.get("id")),
                     text=compact_json(fc.get("args", {})))]
    fr = block.get("functionResponse")
    if isinstance(fr, dict):
        return function_response_parts(fr)
    for key in ("inlineData", "inline_data"):
        d = block.get(key)
        if isinstance(d, dict):
            size = b64_size(d.get("data"))
            media = _str(d.get("mimeType") or d.get("mime_type"))
            kind = IMAGE if media and media.startswith("image/") else BLOB
            return [Part(kind=kind, media_type=media, ref=f"{size} bytes")]
    d = block.get("fileData")
    if isinstance(d, dict):
        media = _str(d.get("mimeType"))
        kind = IMAGE if media and media.startswith("image/") else BLOB
        return [Part(kind=kind, media_type=media, ref=_str(d.get("fileUri")))]
    if not block:
        return []
    return [Part(kind=BLOB, ref=compact_json(block))]


def function_response_parts(fr: dict) -> list[Part]:
    """Gemini functionResponse {id?, name, response: {output|result|content|error: ...}}."""
    name, call_id = _str(fr.get("name")), _str(fr.get("id"))
    resp = fr.get("response")
    if isinstance(resp, dict) and len(resp) == 1:
        (key, value), = resp.items()
        if key in ("output", "result", "content", "error"):
            return result_parts(value, call_id, name, key == "error")
    return result_parts(resp, call_id, name, False)


def _str(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


_USAGE_MAX = 2 ** 62


def add_usage(total: dict[str, int], usage: Any) -> None:
    """Add the top-level integer counters of a usage dict into total (nested dicts, floats
    and absurd values skipped, so the sums always fit a signed 64-bit integer)."""
    if not isinstance(usage, dict):
        return
    for k, v in usage.items():
        if type(v) is int and 0 <= v < _USAGE_MAX and isinstance(k, str):
            total[k] = min(total.get(k, 0) + v, _USAGE_MAX)


def iso_from_unix(ts: Any) -> Optional[str]:
    if type(ts) not in (int, float) or ts != ts:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def main_model(messages: Iterable[Message], fallback: Any = None) -> Optional[str]:
    """The most used model among messages (first seen wins a tie), else fallback."""
    counts: Counter[str] = Counter()
    for m in messages:
        if m.model and not m.model.startswith("<"):   # "<synthetic>" in Claude Code
            counts[m.model] += 1
    if counts:
        return counts.most_common(1)[0][0]
    return fallback if isinstance(fallback, str) and fallback else None


def time_range(stamps: Iterable[Optional[str]]) -> tuple[Optional[str], Optional[str]]:
    """(earliest, latest) of ISO timestamps (string order; all one format in a file)."""
    valid = [s for s in stamps if isinstance(s, str) and s]
    if not valid:
        return None, None
    return min(valid), max(valid)


def finish(conv: Conversation, fallback_model: Any = None) -> Conversation:
    """Fill the derived fields of a conversation (model; started/ended from messages)."""
    if not conv.model:
        conv.model = main_model(conv.messages, fallback_model)
    if conv.started is None or conv.ended is None:
        first, last = time_range(m.timestamp for m in conv.messages)
        conv.started = conv.started or first
        conv.ended = conv.ended or last
    return conv
