"""The tokenomy command: info, chat (the README's main job), clear errors."""

import json
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tokenomy.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_info_lists_versions_engines_and_the_model():
    p = run("info")
    assert p.returncode == 0, p.stderr
    for word in ("tokenomy", "transformers", "embedded", "vllm", "openai", "scripted", "converted"):
        assert word in p.stdout


def test_chat_with_the_scripted_double(tmp_path):
    out = tmp_path / "a.json"
    p = run("chat", "hello there", "--model", "scripted", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("hello there") and "usage: prompt=" in p.stdout
    assert json.loads(out.read_text())["usage"]["calls"] == 1


def test_unknown_model_spec_is_a_clear_error():
    p = run("chat", "hi", "--model", "gpt-17")
    assert p.returncode == 1
    assert "unknown model spec 'gpt-17'" in p.stderr and "Traceback" not in p.stderr


def test_not_a_model_directory_is_a_clear_error(tmp_path):
    p = run("chat", "hi", "--model", f"hf:{tmp_path}")
    assert p.returncode == 1 and "not a model directory" in p.stderr


@pytest.mark.embedded
def test_main_job_answers_with_usage():
    p = run("chat", "What is the capital of France?")
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout
    assert "usage: prompt=" in p.stdout and "calls=1" in p.stdout and "o200k_base" in p.stdout
