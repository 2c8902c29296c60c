#!/usr/bin/env python3
"""Anthropic through the sidecar with a dummy key: the SDK sends `x-api-key: dummy`, the
sidecar drops it and the tokenizer injects the real key. ANTHROPIC_MODEL picks the model."""

import os

import anthropic

client = anthropic.Anthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", "dummy"))
message = client.messages.create(
    model=os.environ.get("ANTHROPIC_MODEL", "claude-haiku-4-5"),
    max_tokens=100,
    messages=[{"role": "user", "content": "Say hello in five words."}],
)
print("".join(block.text for block in message.content if block.type == "text"))
