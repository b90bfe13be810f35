"""A staged Space run the way Hugging Face Spaces runs it (`benchmarks/spaces_runtime.py`): pushed to the Hub test
double and downloaded back, a fresh venv from its own `requirements.txt` alone, `python app.py` with
`GRADIO_SERVER_NAME=0.0.0.0`, its model downloaded by repo id into an empty cache, answered through
`gradio_client`.

CI runs the cheapest Space this way (question answering: no torch; a fresh venv takes 1-3 minutes); the
five Spaces together take `python benchmarks/spaces_runtime.py`. That every import of every staged Space is in
its requirements is checked for all five in `tests/test_spaces_staging.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pocketlm.settings import REPO_ROOT, hub_dir

HUB_DOUBLE = REPO_ROOT / "tests" / "hub_double.py"


@pytest.mark.slow
@pytest.mark.skipif(not HUB_DOUBLE.is_file(), reason="needs the Hub test double, tests/hub_double.py")
def test_the_question_answering_space_answers_from_a_fresh_venv_and_the_hub(tiny_qa_onnx_repo, tmp_path):
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "spaces_runtime.py"), "--spaces", "question_answering",
               "--hub_dir", str(hub_dir()), "--work_dir", str(tmp_path / "work"), "--output_dir", str(tmp_path / "results")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=REPO_ROOT, env=os.environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "spaces_runtime.json").read_text())
    space = record["spaces"]["question_answering"]
    assert space["endpoints"] == ["/answer_question"] and space["models"] == ["spaces-check/minilm-squad-onnx"]
    assert not space["venv_reused"] and 0 < space["cold_start_s"] <= space["first_answer_s"]
    log = (tmp_path / "work" / "question_answering" / "space.log").read_text()
    assert "Traceback" not in log
    downloaded = list((tmp_path / "work" / "question_answering" / "hf-home" / "hub").glob("models--spaces-check--minilm-squad-onnx"))
    assert downloaded, "the Space did not download its model into its own empty cache"
