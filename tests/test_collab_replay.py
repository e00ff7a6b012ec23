"""``tokenomy bench collab --record PATH`` / ``--replay PATH``: a stored record is scored again without a model, to
numbers counted by hand, and the command passes ``--record`` on to the run that writes it."""

from __future__ import annotations

import json

from tokenomy.cli import main


def _sample(answer, tokens):
    return {"text": answer, "answer": answer, "completion_tokens": tokens, "prompt_tokens": 10,
            "cached_prompt_tokens": 0, "seed": None}


RECORD = {
    # Pools of one answer each, so every stopping rule and every shuffle votes the same: 7 (right), 2 (wrong,
    # the gold is 5), 1 (right).
    "items": [{"answer": "7"}, {"answer": "5"}, {"answer": "1"}],
    "pools": [[_sample("7", 3)] * 4, [_sample("2", 5)] * 4, [_sample("1", 2)] * 4],
    "routing": {"short_correct": [True, False, True, False], "long_correct": [False, True, True, True],
                "surprisal": [0.1, 3.0, 0.2, 2.0], "short_flops": 1.0, "long_flops": 4.0, "short_tokens": 10.0,
                "long_tokens": 20.0},
}


def test_replay_scores_a_stored_record_to_hand_counted_numbers(tmp_path, capsys):
    rec, out = tmp_path / "record.json", tmp_path / "replay.json"
    rec.write_text(json.dumps(RECORD))
    assert main(["bench", "collab", "--replay", str(rec), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    got = {r["policy"]: r for r in json.loads(out.read_text())["records"]}
    # Every rule: 2 of 3 items right. fixed(n=4) draws the whole pool: (4*3 + 4*5 + 4*2) / 3 tokens per item;
    # fixed(n=1) one sample: (3 + 5 + 2) / 3.
    for name in ("fixed(n=4)", "esc(w=4,max=4)", "fixed(n=1)"):
        assert got[name]["accuracy"] == 2 / 3 and got[name]["kind"] == "sampling"
    assert (got["fixed(n=4)"]["samples"], got["fixed(n=4)"]["tokens"]) == (4.0, 40 / 3)
    assert (got["fixed(n=1)"]["samples"], got["fixed(n=1)"]["tokens"]) == (1.0, 10 / 3)
    # Routing: escalate the most surprised items (1, then 3, then 2) to the long model; cost: every short call
    # plus the long calls made. 25%: one item, [T, T, T, F]; 50%: two, all right; 75%: three, all right.
    routed = [(got[f"entropy-replay@{r}"]["accuracy"], got[f"entropy-replay@{r}"]["tokens"],
               got[f"entropy-replay@{r}"]["flops"]) for r in ("0.25", "0.50", "0.75")]
    assert routed == [(0.75, 10 + 20 / 4, 1 + 4 / 4), (1.0, 10 + 20 * 2 / 4, 1 + 4 * 2 / 4),
                      (1.0, 10 + 20 * 3 / 4, 1 + 4 * 3 / 4)]
    lines = {line.split()[0]: line.split()[1:7] for line in printed.splitlines() if line.strip()}
    assert lines["fixed(n=4)"] == ["accuracy", "0.667", "samples", "4.00", "tokens", "13.3"]
    assert lines["entropy-replay@0.50"] == ["accuracy", "1.000", "samples", "1.00", "tokens", "20.0"]


def test_replay_of_something_else_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"items": []}))
    assert main(["bench", "collab", "--replay", str(bad)]) == 1
    assert "is not a record of tokenomy bench collab" in capsys.readouterr().err


def test_the_command_passes_record_on_and_what_it_writes_replays(tmp_path, capsys, monkeypatch):
    from tokenomy.benchmarks import collab

    seen = {}

    def fake_run(**kwargs):  # the real run needs two models; this one writes the record a run would
        seen.update(kwargs)
        with open(kwargs["record"], "w") as f:
            json.dump(RECORD, f)
        long = collab.CollabRecord("long", "control", 0.5, None, None, 10.0, None)
        return collab.CollabReport([long], {}, [], "", "L", "S")

    monkeypatch.setattr(collab, "run_collab_bench", fake_run)
    rec = tmp_path / "r.json"
    assert main(["bench", "collab", "--quick", "--record", str(rec), "--long", "L", "--short", "S"]) == 0
    assert (seen["record"], seen["long_spec"], seen["short_spec"], seen["quick"]) == (str(rec), "L", "S", True)
    capsys.readouterr()
    assert main(["bench", "collab", "--replay", str(rec)]) == 0
    assert "entropy-replay@0.50" in capsys.readouterr().out
