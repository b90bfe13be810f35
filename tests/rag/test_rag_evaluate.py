"""The evaluation script: any passages.jsonl + qa.jsonl pair; bad input gets one line naming file and line."""

from __future__ import annotations

import json
import runpy

import pytest

from pocketlm.settings import REPO_ROOT

SCRIPT = str(REPO_ROOT / "training_scripts" / "evaluate_rag.py")


def run_script(*args: str):
    import sys

    argv, sys.argv = sys.argv, [SCRIPT, *args]
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(SCRIPT, run_name="__main__")
    finally:
        sys.argv = argv
    return exited.value.code


def test_missing_file_is_named(rag_files, tmp_path, capsys):
    passages, _ = rag_files
    assert run_script("--passages", str(passages), "--qa", str(tmp_path / "nope.jsonl")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.jsonl" in err and "Traceback" not in err


def test_malformed_line_is_named_with_its_number(rag_files, tmp_path, capsys):
    passages, qa = rag_files
    bad = tmp_path / "qa.jsonl"
    lines = qa.read_text().splitlines()
    bad.write_text(lines[0] + "\n{not json\n")
    assert run_script("--passages", str(passages), "--qa", str(bad)) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"id": "x", "question": "q?", "answers": ["a"], "passage_id": "missing"}) + "\n")
    assert run_script("--passages", str(passages), "--qa", str(bad)) == 2
    assert "'missing'" in capsys.readouterr().err
    assert run_script("--passages", str(passages), "--qa", str(qa), "--lexical_weight", "-1") == "error: --lexical_weight must be >= 0 (0: dense retrieval only)"


def test_evaluates_retrieval_and_answers(rag_files, tiny_lm_repo, tmp_path, capsys):
    passages, qa = rag_files
    out = tmp_path / "eval"
    code = run_script(
        "--passages", str(passages), "--qa", str(qa), "--query_adapter", "none", "--reader", "none",
        "--generator_lora", "none", "--generator_base", tiny_lm_repo, "--max_questions", "6", "--output_dir", str(out),
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["qa"]["count"] == 6 and results["passages"]["count"] == 50
    assert results["retrieval"]["recall@10"] >= results["retrieval"]["recall@1"] > 0
    assert results["lexical_weight"] > 0  # hybrid by default
    assert set(results["readers"]["generative"]) >= {"exact_match", "f1"}
    assert "recall@5" in (out / "results.md").read_text() and "recall@5" in capsys.readouterr().out
