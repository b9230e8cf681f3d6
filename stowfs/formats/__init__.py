"""Conversation formats: detect a file's format by content and parse it into the model
(stowfs.conversation). `parse(data, name)` never raises.

Conversation format labels (Parsed.format):
  claude-code-jsonl, codex-rollout-jsonl, gemini-cli-json, gemini-cli-logs,
  openai-chat, anthropic-messages, openai-responses, gemini-api,
  api-exchange ({"request", "response"} pair), sharegpt, alpaca, stowken, aider-markdown,
  messages-jsonl (one chat message per line), <label>-jsonl (one conversation per line,
  e.g. sharegpt-jsonl, openai-chat-jsonl, api-exchange-jsonl), mixed-json / mixed-jsonl.
Not a conversation (Parsed.error says why): empty, binary, opaque, json, jsonl, text.

Modules: detect (sniffing and dispatch), common (content value -> Parts, usage, times),
chat_api (provider API payloads and logged exchanges), agent_sessions (Claude Code,
Codex CLI, Gemini CLI), sharegpt (ShareGPT, Alpaca), stowken, aider.
"""
from .detect import parse, parse_value

NOT_CONVERSATION = ("empty", "binary", "opaque", "json", "jsonl", "text")

__all__ = ["parse", "parse_value", "NOT_CONVERSATION"]
