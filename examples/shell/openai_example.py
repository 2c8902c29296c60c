#!/usr/bin/env python3
"""OpenAI through the sidecar with a dummy key: the SDK sends `Authorization: Bearer dummy`,
the sidecar drops it and the tokenizer injects the real key. OPENAI_MODEL picks the model."""

import os

from openai import OpenAI

client = OpenAI(api_key=os.environ.get("OPENAI_API_KEY", "dummy"))
response = client.responses.create(
    model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
    input="Say hello in five words.",
)
print(response.output_text)
