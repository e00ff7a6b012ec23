"""The referee's lenient tool parser: Qwen2.5-Coder's fenced-JSON tool calls read as hermes calls (the rewrite is
plain Python; the parser class around it runs in vLLM, tests/test_referee.py's real-server test)."""

from __future__ import annotations

import json

from tokenomy.benchmarks.vllm_tool_parser import as_hermes

NAMES = ["search", "lookup", "calc"]
FENCED = ('```json\n{\n  "name": "lookup",\n  "arguments": {\n    "entity": "Orvo",\n    "attribute": "population"\n'
          '  }\n}\n```')
CALL = {"name": "lookup", "arguments": {"entity": "Orvo", "attribute": "population"}}


def tagged(text: str) -> list[dict]:
    out = []
    for part in text.split("<tool_call>")[1:]:
        out.append(json.loads(part.split("</tool_call>")[0]))
    return out


def test_the_coder_model_s_fenced_call_becomes_a_hermes_call():
    assert tagged(as_hermes(FENCED, NAMES, final=True)) == [CALL]
    assert tagged(as_hermes(json.dumps(CALL), NAMES, final=True)) == [CALL]  # a bare object
    two = "Let me look.\n" + FENCED + "\nand\n" + FENCED.replace("Orvo", "Velmora")
    got = as_hermes(two, NAMES, final=True)
    assert got.startswith("Let me look.\n<tool_call>") and len(tagged(got)) == 2
    reopened = "<|im_start|>\n" + json.dumps(CALL) + "\n"  # seen from Qwen2.5-Coder-1.5B
    assert tagged(as_hermes(reopened, NAMES, final=True)) == [CALL]
    params = json.dumps({"name": "calc", "parameters": {"expression": "1+1"}})
    assert tagged(as_hermes(params, NAMES, final=True)) == [{"name": "calc", "arguments": {"expression": "1+1"}}]


def test_what_is_not_a_call_of_a_known_tool_stays_text():
    for text in ("The answer is 412,000.", '```json\n{"name": "rm_rf", "arguments": {}}\n```',
                 "```python\nprint(1)\n```", '{"answer": 3}', '```json\n{"name": "lookup", "arguments": "x"}\n```'):
        assert as_hermes(text, NAMES, final=True) == text
    assert as_hermes(FENCED, [], final=True) == FENCED  # a request without tools
    hermes = '<tool_call>{"name": "calc", "arguments": {"expression": "2"}}</tool_call>'
    assert as_hermes(hermes, NAMES, final=True) == hermes


def test_while_streaming_no_part_of_a_call_leaks_out_as_text():
    text = "Looking it up.\n" + FENCED
    seen = []
    for end in range(1, len(text) + 1):
        got = as_hermes(text[:end], NAMES, final=False)
        visible = got.split("<")[0]  # what the hermes parser would send as content
        assert "Looking it up.\n".startswith(visible) or visible == "Looking it up.\n", (end, got)
        seen.append(got)
    assert tagged(seen[-1]) == [CALL]
    assert any(g.endswith('"entity": "Or') for g in seen)  # the call streams as an open <tool_call>


def test_while_streaming_plain_text_and_code_go_through():
    text = "Sure.\n```python\nprint(1)\n```\nDone."
    assert as_hermes(text, NAMES, final=False) == text
    assert as_hermes("The answer is 7", NAMES, final=False) == "The answer is 7"
