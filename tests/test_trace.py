"""The trace of a run: what each event holds (OpenTelemetry GenAI names), the node and plan step it came from,
reading damaged files, one run out of many, and the export to OpenTelemetry's SDK."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_module
from tests.trace_doubles import HOSTILE, graph_trace, rewoo_trace
from tokenomy.errors import UserError
from tokenomy.events import clip, input_messages, output_text
from tokenomy.planners import parse_plan, plan_steps
from tokenomy.trace import Trace, export_otel, read_trace


def test_a_rewoo_run_traces_every_kind_of_event_in_order(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    kinds = [e["event"] for e in t.events]
    assert kinds[0] == "run" and t.events[0]["status"] == "started"
    assert kinds[-1] == "run" and t.events[-1]["status"] == "finished"
    assert t.events[-1]["answer"] == "The population of Velmora is 412,000."
    assert {"model_call", "plan", "execution", "tool_call", "message", "checkpoint"} <= set(kinds)
    assert all(e["run"] == "run-rewoo" and e["strategy"] == "rewoo" and isinstance(e["time"], float)
               for e in t.events)
    # Two plans (the first, then the re-plan of the failed part), two executions, one solver call.
    assert [e["agent"] for e in t.model_calls] == ["planner", "planner", "solver"]
    assert len(t.plans) == 2 and len(t.of("execution")) == 2


def test_model_calls_carry_genai_attributes_prompt_output_and_their_node(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    call = t.model_calls[0]
    assert call["gen_ai.operation.name"] == "chat" and call["gen_ai.agent.name"] == "planner"
    assert call["gen_ai.request.model"] == "scripted" and call["gen_ai.usage.input_tokens"] > 0
    assert call["gen_ai.usage.output_tokens"] > 0 and call["gen_ai.response.finish_reasons"] == ["stop"]
    assert call["node"] == "plan" and call["start_time"] <= call["time"]
    assert call["gen_ai.input.messages"][0]["parts"][0]["type"] == "text"
    assert input_messages(call)[-1]["role"] == "user"
    assert "What is the population of Velmora?" in input_messages(call)[-1]["content"]
    assert output_text(call).startswith("e1 = lookup(")
    assert t.model_calls[2]["node"] == "solve"


def test_tool_calls_name_their_plan_step_and_keep_errors_and_hostile_results_as_data(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    by_step = {e["step"]: e for e in t.tool_calls}
    assert set(by_step) >= {"e1", "e2", "e3", "e4"}
    assert all(e["node"] == "execute" and e["gen_ai.operation.name"] == "execute_tool" for e in t.tool_calls)
    assert by_step["e1"]["gen_ai.tool.call.arguments"] == {"entity": "Velmora", "attribute": "population"}
    assert by_step["e1"]["gen_ai.tool.call.result"] == "412,000"
    boom = by_step["e2"]
    assert boom["error.type"] == "RuntimeError" and "the boom tool failed" in boom["error"]
    assert HOSTILE in by_step["e3"]["gen_ai.tool.call.result"]  # kept verbatim: escaping is the viewer's job


def test_plans_and_executions_give_the_dag_and_each_steps_status(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    first = t.plans[0]
    assert first["valid"] and [s["id"] for s in first["steps"]] == ["e1", "e2", "e3", "answer"]
    assert {s["id"]: s["reads"] for s in first["steps"]} == {"e1": [], "e2": ["e1"], "e3": [], "answer": ["e1", "e3"]}
    run1 = t.of("execution")[0]["results"]
    assert run1["e1"] == {"status": "ok", "value": "412,000", "attempts": 1, "seconds": run1["e1"]["seconds"]}
    assert run1["e2"]["status"] == "error" and run1["e3"]["status"] == "ok"
    assert run1["answer"]["status"] == "ok"
    run2 = t.of("execution")[1]["results"]
    assert run2["e4"]["status"] == "ok" and "e1" not in run2  # a known result is not re-reported


def test_messages_follow_rewoo_s_flow_with_their_tokens(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    edges = [(m["src"], m["dst"]) for m in t.messages]
    assert edges == [("planner", "executor"), ("planner", "executor"), ("executor", "solver")]
    assert all(m["tokens"] > 0 for m in t.messages)
    assert set(t.tokens_by_edge()) == {"planner->executor", "executor->solver"}


def test_checkpoints_are_traced_with_the_nodes_that_run_next(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    cps = t.of("checkpoint")
    assert len(cps) >= 5 and all(c["checkpoint_id"] for c in cps)
    assert [c["step"] for c in cps] == sorted(c["step"] for c in cps)
    assert ["plan"] in [c["next"] for c in cps] and cps[-1]["next"] == []


def test_a_graph_run_traces_its_graph_with_pruned_parts_and_its_messages(tmp_path):
    t = Trace.load(graph_trace(tmp_path / "g.jsonl"))
    g = t.graph
    assert g is not None and g["name"] and g["rounds"] == 2
    states = {a["name"]: a["state"] for a in g["agents"]}
    assert states == {"a": "runs", "b": "runs", "c": "pruned"}
    edge_states = {(e["src"], e["dst"], e["kind"]): e["state"] for e in g["edges"]}
    assert edge_states[("a", "c", "spatial")] == "pruned" and edge_states[("a", "b", "temporal")] == "pruned"
    assert edge_states[("a", "b", "spatial")] == "runs"
    assert {m["edge"] for m in t.messages} >= {"a -> b", "a ~> a", "b ~> b"}
    assert all(m["tokens"] > 0 for m in t.messages)
    assert {e.get("round") for e in t.model_calls} == {0, 1}
    assert t.tokens_by("agent").keys() == {"a", "b"}


def test_token_sums_match_the_run_s_usage(tmp_path):
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    usage = t.events[-1]["usage"]
    by_agent = t.tokens_by("agent")
    for agent, u in usage.items():
        assert by_agent[agent]["prompt"] == u["prompt_tokens"]
        assert by_agent[agent]["completion"] == u["completion_tokens"]
    assert set(t.tokens_by("node")) == {"plan", "solve"}
    assert t.total()["calls"] == 3


def test_damaged_lines_are_skipped_and_counted_and_a_file_with_no_events_is_refused(tmp_path):
    path = rewoo_trace(tmp_path / "r.jsonl")
    n = len(read_trace(path))
    with open(path, "a") as f:
        f.write('[1, 2]\n{"no_event": 1}\n{"event": "model_call", "cut off')
    t = Trace.load(path)
    assert len(t.events) == n and t.skipped == 3
    (tmp_path / "bad.jsonl").write_text("hello\nworld\n")
    with pytest.raises(UserError, match="holds no trace events"):
        Trace.load(tmp_path / "bad.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="not a tokenomy trace"):
        Trace.load(tmp_path / "bin.jsonl")
    with pytest.raises(UserError, match="no trace file"):
        Trace.load(tmp_path / "missing.jsonl")


def test_one_run_can_be_selected_from_a_file_holding_several(tmp_path):
    path = tmp_path / "both.jsonl"
    rewoo_trace(path, run="one")
    rewoo_trace(path, run="two")
    t = Trace.load(path)
    assert [r["run"] for r in t.runs] == ["one", "two"]
    two = t.select("two")
    assert {e["run"] for e in two.events} == {"two"} and len(two.events) == len(t.events) // 2
    with pytest.raises(UserError, match="runs: one, two"):
        t.select("three")


def test_clip_cuts_long_values_with_a_marker_and_writes_data_as_json():
    assert clip("x" * 10, 4) == "xxxx [... 6 more characters]"
    assert clip({"a": [1, "é"]}) == '{"a": [1, "é"]}'
    assert json.loads(clip([1, 2])) == [1, 2]


def test_plan_steps_flatten_blocks_and_read_through_them():
    plan = parse_plan('xs = search(query="a")\nfor x in xs {\n  y = lookup(entity=x, attribute="b")\n}\n'
                      'if len > 2 {\n  z = y\n}\nanswer(y)'.replace("len", "xs"))
    steps = {s["id"]: s for s in plan_steps(plan)}
    assert steps["for@2"]["reads"] == ["xs"] and steps["y"]["parent"] == "for@2"
    assert steps["y"]["reads"] == ["for@2"]  # the loop variable is local, not a step
    assert steps["z"]["reads"] == ["if@5", "y"] and steps["answer"]["reads"] == ["y"]
    assert steps["y"]["kind"] == "call" and steps["z"]["kind"] == "compute"


def test_export_to_opentelemetry_makes_a_span_per_call_under_a_run_span(tmp_path):
    require_module("opentelemetry.sdk", "pip install 'tokenomy[test]'")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    n = export_otel(t, tracer_provider=provider)
    spans = exporter.get_finished_spans()
    assert n == len(spans) == 1 + len(t.model_calls) + len(t.tool_calls)
    root = next(s for s in spans if s.name == "invoke_agent rewoo")
    chats = [s for s in spans if s.name == "chat scripted"]
    assert len(chats) == 3 and all(s.parent.span_id == root.context.span_id for s in chats)
    assert chats[0].attributes["gen_ai.usage.input_tokens"] > 0
    assert json.loads(chats[0].attributes["gen_ai.input.messages"])[0]["parts"][0]["type"] == "text"
    boom = next(s for s in spans if s.name == "execute_tool boom")
    assert boom.status.status_code.name == "ERROR"
    assert all(s.start_time <= s.end_time for s in spans)
    assert {ev.name for ev in root.events} >= {"plan", "execution", "message", "checkpoint", "run"}


def test_live_spans_come_as_the_run_happens_and_content_only_when_asked(tmp_path):
    require_module("opentelemetry.sdk", "pip install 'tokenomy[test]'")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tokenomy import tool
    from tokenomy.kernels import ScriptedEngine
    from tokenomy.planners.rewoo import Rewoo
    from tokenomy.trace import OtelSink

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen_during = []

    @tool
    def lookup(entity: str, attribute: str) -> str:
        """Looks a fact up."""
        seen_during.append([s.name for s in exporter.get_finished_spans()])  # the planner's span is out already
        return "412,000"

    for capture in (False, True):
        exporter.clear()
        sink = OtelSink(provider, capture_content=capture)
        engine = ScriptedEngine(lambda req: 'e1 = lookup(entity="Velmora", attribute="population")\nanswer(e1)')
        Rewoo(engine, [lookup], on_event=sink).run("What is the population of Velmora?")
        spans = exporter.get_finished_spans()
        root = next(s for s in spans if s.name == "invoke_agent rewoo")
        chat = next(s for s in spans if s.name == "chat scripted")
        call = next(s for s in spans if s.name == "execute_tool lookup")
        assert chat.parent.span_id == root.context.span_id == call.parent.span_id
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert ("gen_ai.input.messages" in chat.attributes) == capture
        assert ("gen_ai.tool.call.arguments" in call.attributes) == capture
    assert seen_during[0] == ["chat scripted"]  # spans are sent as calls end, not when the run is over
