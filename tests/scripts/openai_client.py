"""The official `openai` client against namm-serve: a chat completion, the same streamed, and a
text completion; prints what it got as one JSON object.

usage: openai_client.py BASE_URL PROMPT_FILE MAX_TOKENS POLICY"""
import json
import sys

from openai import OpenAI

base, prompt_file, max_tokens, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
prompt = open(prompt_file, encoding="utf-8").read()
client = OpenAI(base_url=base, api_key="unused", max_retries=0)
model = client.models.list().data[0].id
ask = dict(model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
           max_tokens=max_tokens, extra_body={"memory_policy": policy})
whole = client.chat.completions.create(**ask)
streamed, stream_usage = "", None
for chunk in client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
    if chunk.choices and chunk.choices[0].delta.content:
        streamed += chunk.choices[0].delta.content
    if chunk.usage is not None:
        stream_usage = chunk.usage.model_dump()
completion = client.completions.create(model=model, prompt="The capital of France is",
                                       temperature=0, max_tokens=8)
print(json.dumps({
    "model": model,
    "text": whole.choices[0].message.content,
    "finish_reason": whole.choices[0].finish_reason,
    "usage": whole.usage.model_dump(),
    "stream_text": streamed,
    "stream_usage": stream_usage,
    "completion": completion.choices[0].text,
}))
