"""Conversation formats: detect a file's format by content and parse it into the model
(stowfs.conversation). `parse(data, name)` never raises.

Conversation format labels (Parsed.format):
  claude-code-jsonl, codex-rollout-jsonl, gemini-cli-json, gemini-cli-logs,
  kimi-cli-context-jsonl, copilot-cli-events-jsonl, cline-api-history, continue-session,
  openai-chat, anthropic-messages, openai-responses, gemini-api, llamafactory-messages,
  api-exchange ({"request", "response"} pair), anthropic-stream-events,
  openai-responses-stream-events, openai-chat-stream-chunks, chatgpt-export,
  claude-ai-export, sharegpt, alpaca, preference, prompt-completion, stowken,
  aider-markdown, messages-jsonl (one chat message per line), <label>-jsonl (one
  conversation per line, e.g. sharegpt-jsonl, openai-chat-jsonl, api-exchange-jsonl),
  mixed-json / mixed-jsonl.
Not a conversation (Parsed.error says why and what the file looked like): empty, binary,
opaque, json, jsonl, text. A conversation rendered only in part: Parsed.partial.

Modules: detect (sniffing and dispatch, descriptions of unknown files), common (content
value -> Parts, usage, times), chat_api (provider API payloads, logged exchanges, stream
event logs), agent_sessions (Claude Code, Codex CLI, Gemini CLI), other_agents (Kimi CLI,
Copilot CLI, Cline / Roo, Continue), exports (ChatGPT, Claude.ai), sharegpt (ShareGPT,
Alpaca, preference and completion rows), stowken, aider.
"""
from .detect import parse, parse_value

NOT_CONVERSATION = ("empty", "binary", "opaque", "json", "jsonl", "text")

__all__ = ["parse", "parse_value", "NOT_CONVERSATION"]
