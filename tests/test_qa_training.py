"""The QA fine-tune script (smoke preset), the evaluation script, and the pipelines on the published models."""

import json
import os
import runpy
import subprocess
import sys

import pytest

from pocketlm import MINILM_SQUAD, TINY_LM
from pocketlm.cli import run
from pocketlm.settings import REPO_ROOT, hub_dir

SCRIPTS = REPO_ROOT / "training_scripts"


def _script(name):
    return runpy.run_path(str(SCRIPTS / name), run_name=name.removesuffix(".py"))["main"]


def _run_script(*args, timeout=300):
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


@pytest.fixture(scope="module")
def smoke_qa(tmp_path_factory):
    """Fine-tune the real MiniLM for 2 steps (smoke preset) and publish it as `pocketlm/minilm-squad` in the test hub."""
    output_dir = tmp_path_factory.mktemp("qa-run")
    assert _script("finetune_qa.py")(["--preset", "smoke", "--output_dir", str(output_dir)]) == 0
    return output_dir


def test_finetune_publishes_a_model_with_card_metrics_and_window_settings(smoke_qa):
    folder = hub_dir() / MINILM_SQUAD
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "metrics.json", "curves.png", "training_args.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)  # nothing pickled
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"exact_match", "f1"} and all(0 <= v <= 100 for v in metrics.values())
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: question-answering" in card and "name: f1" in card and "Training took" in card
    config = json.loads((folder / "config.json").read_text())
    assert (config["qa_max_length"], config["qa_doc_stride"]) == (128, 32)
    history = json.loads((smoke_qa / "metrics.json").read_text())
    assert any("eval_loss" in r for r in history) and any("eval_f1" in r for r in history)


def test_finetune_resumes_from_its_last_checkpoint(smoke_qa, capsys):
    assert (smoke_qa / "checkpoint-2").is_dir()
    _script("finetune_qa.py")(["--preset", "smoke", "--output_dir", str(smoke_qa), "--max_steps", "3", "--output_repo", "pocketlm/qa-resumed"])
    assert f"resuming from {smoke_qa / 'checkpoint-2'}" in capsys.readouterr().out
    state = json.loads((smoke_qa / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [r["step"] for r in state["log_history"] if "loss" in r] == [1, 2, 3]


def test_a_run_folder_of_other_windows_is_refused_not_resumed(smoke_qa, capsys):
    """The folder records its base weights and windows: a run with other windows would otherwise resume the
    smoke run's checkpoints as if they were its own."""
    main = _script("finetune_qa.py")
    with pytest.raises(SystemExit) as exit_:
        run(lambda: main(["--preset", "smoke", "--output_dir", str(smoke_qa), "--max_length", "192", "--max_steps", "4"]))
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and "holds a run whose windows differ from this one's" in err and "\n" not in err.strip()
    assert not (smoke_qa / "checkpoint-4").exists()


def test_finetune_rejects_bad_arguments_in_one_line(capsys):
    main = _script("finetune_qa.py")
    with pytest.raises(SystemExit) as exit_:
        run(lambda: main(["--preset", "smoke", "--max_length", "128", "--doc_stride", "100"]))
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: --doc_stride must be in [0, max_length/2)")


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    from pocketlm.data import squad_json_path

    data = json.loads(squad_json_path("validation").read_text())
    article = data["data"][0]
    article["paragraphs"] = article["paragraphs"][:2]
    path = tmp_path_factory.mktemp("squad") / "two-paragraphs.json"
    path.write_text(json.dumps({"version": "1.1", "data": [article]}))
    return path, sum(len(p["qas"]) for p in article["paragraphs"])


@pytest.mark.parametrize("flags", [[], ["--onnx", "--int8"]], ids=["pytorch", "onnx-int8"])
def test_evaluate_script_prints_em_f1_json(smoke_qa, squad_file, flags, capsys):
    path, questions = squad_file
    assert _script("evaluate_qa.py")([str(path), "--model", MINILM_SQUAD, *flags]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["questions"] == questions and 0 <= scores["exact_match"] <= scores["f1"] <= 100
    assert scores["backend"] == ("onnxruntime-int8" if flags else "pytorch")


def test_evaluate_script_errors_name_the_problem(tmp_path):
    evaluate = _script("evaluate_qa.py")
    with pytest.raises(SystemExit):
        evaluate([str(tmp_path / "x.json"), "--int8"])
    (tmp_path / "bad.json").write_text('{"data": [{"title": "t"}]}')
    result = _run_script(SCRIPTS / "evaluate_qa.py", tmp_path / "bad.json")
    assert result.returncode == 2 and "not in SQuAD format" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- pipelines


def test_generate_text_samples_reproducibly_with_a_seed(tiny_lm_repo):
    from pocketlm.inference.pipelines import generate_text, text_generator

    first = generate_text("The history of the city", max_new_tokens=12, seed=3)
    assert first == generate_text("The history of the city", max_new_tokens=12, seed=3)
    assert first.startswith("The history of the city") and len(first) > len("The history of the city")
    assert generate_text("The history of the city", max_new_tokens=12, seed=4) != first
    assert text_generator(TINY_LM).model.config.model_type == "llama"  # the project's LM, through the hub


def test_answer_question_returns_a_span_of_the_context(smoke_qa):
    from pocketlm.inference.pipelines import answer_question

    context = "The Eiffel Tower was designed by the company of Gustave Eiffel and built from 1887 to 1889 in Paris."
    answer = answer_question(context=context, question="Who designed the Eiffel Tower?")
    assert answer and answer in context


def test_readme_examples_reproduce_across_processes(smoke_qa, tiny_lm_repo, tmp_path):
    from pocketlm.inference.readme_examples import END, START, render_examples

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nold\n{END}\n\ntail\n")
    script = SCRIPTS / "pipeline_examples.py"
    assert _run_script(script, "--write", readme).returncode == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\ntail\n") and ">>> generate_text(" in text
    assert render_examples() in text  # this process reproduces what another process wrote
    readme.write_text(text.replace(">>> answer_question", ">>> answer_question ", 1))
    assert _script("pipeline_examples.py")(["--check", str(readme)]) == 1


def test_latency_benchmark_writes_json_markdown_and_plot(smoke_qa, tmp_path):
    main = runpy.run_path(str(REPO_ROOT / "benchmarks" / "qa_latency.py"), run_name="qa_latency")["main"]
    args = ["--onnx_model", MINILM_SQUAD, "--requests", "3", "--warmup", "1", "--eval_samples", "4", "--threads", "1", "--output_dir", str(tmp_path)]
    assert main(args) == 0
    results = json.loads((tmp_path / "qa_latency.json").read_text())
    rows = {row["backend"]: row for row in results["rows"]}
    assert list(rows) == ["pytorch", "onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp32-unfused",
                          "onnxruntime-int8-ffn-fp32", "onnxruntime-int8-ffn-int8"]
    assert all(row["n"] == 3 and 0 < row["p50_ms"] <= row["p95_ms"] and "f1" in row for row in results["rows"])
    published = rows["onnxruntime-int8"]
    assert published["size_mb"] < rows["onnxruntime-fp32"]["size_mb"] / 2
    assert rows["onnxruntime-int8-ffn-fp32"]["size_mb"] > published["size_mb"]  # its feed-forward outputs stay fp32
    assert rows["onnxruntime-int8-ffn-int8"]["size_mb"] == pytest.approx(published["size_mb"], abs=0.1)  # smoothing: one vector per layer
    # both fp32 graphs compute the same function, so they give the same answers
    assert (rows["onnxruntime-fp32-unfused"]["exact_match"], rows["onnxruntime-fp32-unfused"]["f1"]) == (
        rows["onnxruntime-fp32"]["exact_match"], rows["onnxruntime-fp32"]["f1"])
    markdown = (tmp_path / "qa_latency.md").read_text()
    assert "| ONNX Runtime int8 (published: smoothed) |" in markdown and "| ONNX Runtime fp32, unfused export |" in markdown
    assert results["machine"]
    assert (tmp_path / "qa_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_int8_ceiling_benchmark_times_the_model_and_its_matrix_products(smoke_qa, tmp_path):
    main = runpy.run_path(str(REPO_ROOT / "benchmarks" / "qa_int8_ceiling.py"), run_name="qa_int8_ceiling")["main"]
    assert main(["--onnx_model", MINILM_SQUAD, "--tokens", "24", "--rounds", "1", "--threads", "1", "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "qa_int8_ceiling.json").read_text())
    layers = json.loads((hub_dir() / MINILM_SQUAD / "config.json").read_text())["num_hidden_layers"]
    assert results["settings"]["projections"] == 4 * layers  # QKV, output, feed-forward up and down, per layer
    pytorch, fp32, int8 = results["rows"]
    assert pytorch["model_speedup"] == pytorch["gemm_speedup"] == 1.0
    for row in results["rows"]:
        assert 0 < row["gemms_p50_ms"] and 0 < row["model_p50_ms"] and 0 < row["gemm_share"] <= 1
        assert row["ceiling"] == pytest.approx(pytorch["model_p50_ms"] / row["gemms_p50_ms"], rel=0.02)
    assert "ceiling" in (tmp_path / "qa_int8_ceiling.md").read_text()
    assert (tmp_path / "qa_int8_ceiling.png").read_bytes()[:4] == b"\x89PNG"


def test_pytorch_backend_on_an_onnx_export_is_a_one_line_error(smoke_qa, squad_file, capsys, tmp_path):
    from pocketlm.inference.qa_loading import onnx_folder

    export = onnx_folder(MINILM_SQUAD)  # the export made for the ONNX tests above (cached per process)
    for name in ("model.onnx", "config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((export / name).read_bytes())
    main = _script("evaluate_qa.py")
    with pytest.raises(SystemExit) as exit_:
        run(lambda: main([str(squad_file[0]), "--model", str(tmp_path)]))
    assert exit_.value.code == 2 and "is an ONNX export without PyTorch weights: run it with --onnx" in capsys.readouterr().err
