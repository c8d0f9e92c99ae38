"""An interactive terminal chat: one line is one user turn, the reply streams as it is generated, the
history is kept until /reset. /exit or Ctrl-D ends it. Works with piped stdin too (no prompts shown then).

    tuneforge chat runs/quickstart
    printf 'hi\\n/reset\\nhello\\n' | tuneforge chat runs/quickstart
    tuneforge chat runs/tools --tools tools.json    # a reply's <tool_call> is shown; /tool RESULT answers it
"""

from __future__ import annotations

import sys
from typing import TextIO

from tuneforge.data.formats import Messages
from tuneforge.data.tools import parse_tool_calls
from tuneforge.inference.engine import Engine, Params, RequestError

HELP = "commands: /reset clears the conversation, /tool RESULT answers a tool call, /exit (or Ctrl-D) quits"


def run_chat(engine: Engine, params: Params, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
             stderr: TextIO = sys.stderr, tools: list | None = None) -> int:
    """`tools`: OpenAI's function list, shown to the model; its calls are kept in the history (as tool_calls)
    and `/tool RESULT` sends a tool result back."""
    interactive = stdin.isatty()
    if interactive:
        who = f" (system prompt: {engine.system_prompt!r})" if engine.system_prompt else ""
        print(f"chatting with {engine.name}{who}; {HELP}", file=stderr)
    history: Messages = []
    while True:
        if interactive:
            stdout.write("\n> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # EOF (Ctrl-D)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(conversation cleared)", file=stderr)
            continue
        if text.startswith("/") and " " not in text:  # /help or a mistyped command, not a message
            print(HELP if text in ("/help", "/?") else f"unknown command {text}; {HELP}", file=stderr)
            continue
        if text.startswith("/tool "):
            turn = [*history, {"role": "tool", "content": text[len("/tool "):].strip()}]
        else:
            turn = [*history, {"role": "user", "content": text}]
        try:
            result = engine.generate(engine.chat_prompt_ids(turn, tools), params, on_text=lambda t: _write(stdout, t))
        except RequestError as exc:  # e.g. the conversation outgrew the input bound: say so, keep going
            print(f"\nerror: {exc} (/reset starts over)", file=stderr)
            continue
        stdout.write("\n")
        stdout.flush()
        if result.finish_reason == "length":
            print(f"(reply cut at {params.max_new_tokens} tokens)", file=stderr)
        history = [*turn, _reply(result.text, tools, stderr)]
    return 0


def _write(stdout: TextIO, text: str) -> None:
    stdout.write(text)
    stdout.flush()


def _reply(text: str, tools: list | None, stderr: TextIO) -> dict:
    """The assistant turn for the history: with tools, its `<tool_call>` blocks become tool_calls."""
    content, calls = parse_tool_calls(text) if tools else (text, [])
    if not calls:
        return {"role": "assistant", "content": text}
    for call in calls:
        print(f"(tool call: {call['function']['name']}({call['function']['arguments']}); "
              "answer with /tool RESULT)", file=stderr)
    return {"role": "assistant", "content": content, "tool_calls": calls}
