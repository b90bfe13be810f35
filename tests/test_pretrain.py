"""The pretraining loop: schedule, precision choice, metrics, best checkpoint, and resuming after a kill."""

import json
import math
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pocketlm.data.corpus import Document, clean_text, prepare_corpus
from pocketlm.training.lm_metrics import distinct_n, perplexity
from pocketlm.training.precision import choose_precision, describe_probe
from pocketlm.training.pretrain import PretrainArguments, learning_rate_at

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared_corpus(tmp_path_factory, corpus_texts) -> Path:
    """A real prepared corpus, small: 12 WikiText-2 articles, vocab 320, 64-token chunks."""
    folder = tmp_path_factory.mktemp("corpus")
    documents = [Document(f"a{i}", clean_text(text)) for i, text in enumerate(corpus_texts)]
    prepare_corpus(documents, folder, vocab_size=320, chunk_length=64, validation_ratio=0.1)
    return folder


def test_distinct_n_and_perplexity():
    assert distinct_n(["a b a b a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b a b a b"], 2) == pytest.approx(2 / 5)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # pooled over texts
    assert distinct_n([""], 2) == 0.0
    assert perplexity(2 * 10, 10) == pytest.approx(torch.e**2)


def test_bits_per_byte_count_the_utf8_bytes_of_the_predicted_text(prepared_corpus):
    """Byte-level BPE: a text's token byte lengths add up to its UTF-8 length (accents, dashes and quotes included),
    so total NLL / (ln 2 × bytes) is the tokenizer-independent bits per byte of exactly the predicted text."""
    from transformers import AutoTokenizer

    from pocketlm.training.lm_metrics import bits_per_byte, token_byte_lengths
    from pocketlm.training.pretrain import target_bytes

    tokenizer = AutoTokenizer.from_pretrained(prepared_corpus / "tokenizer")
    lengths = token_byte_lengths(tokenizer)
    text = "The café in Zürich — opened in 1998 — is “naïve”."
    ids = tokenizer(text)["input_ids"]
    assert int(lengths[ids].sum()) == len(text.encode("utf-8")) and len(ids) < len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_token_id] == 0
    labels = torch.tensor([ids, ids[:4] + [-100] * (len(ids) - 4)])  # the second row padded after 4 tokens
    assert target_bytes({"labels": labels}, lengths).tolist() == [int(lengths[ids[1:]].sum()), int(lengths[ids[1:4]].sum())]
    assert bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)  # 8 bits of loss over 4 bytes


def test_the_card_says_which_text_the_model_read():
    from pocketlm.training.pretrain import corpus_description

    assert corpus_description({"words": 636186, "extra_words": 0}) == "WikiText-2 articles and SQuAD paragraphs (636,186 words)"
    both = corpus_description({"words": 20051354, "extra_words": 19415168})
    assert both.startswith("WikiText-2 articles and SQuAD paragraphs (636,186 words) and 19,415,168 words of English Wikipedia")


def test_learning_rate_warms_up_then_decays_by_steps_or_time():
    args = PretrainArguments(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate_at(args, 0, 0.0) == pytest.approx(1e-4)
    assert learning_rate_at(args, 10, 0.0) == pytest.approx(1e-3)
    assert learning_rate_at(args, 50, 0.5) == pytest.approx(0.55e-3)
    assert learning_rate_at(args, 50, 1.0) == pytest.approx(1e-4) == learning_rate_at(args, 50, 3.0)


def test_bad_arguments_are_config_errors():
    from pocketlm.errors import ConfigError

    with pytest.raises(ConfigError, match="--masking"):
        PretrainArguments(masking="sometimes")
    with pytest.raises(ConfigError, match="--per_device_train_batch_size"):
        PretrainArguments(per_device_train_batch_size=0)


def test_a_checkpoint_resumes_only_under_the_same_training_arguments(tmp_path):
    from pocketlm.errors import ConfigError
    from pocketlm.training.pretrain import load_checkpoint

    args = PretrainArguments(output_dir=str(tmp_path), learning_rate=1e-3)
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "progress.json").write_text(json.dumps({"args": args.training_fields()}))
    other = PretrainArguments(output_dir=str(tmp_path), learning_rate=2e-3, logging_steps=3)  # logging does not count
    with pytest.raises(ConfigError, match=r"last was written with other arguments \(--learning_rate 0.001\)"):
        load_checkpoint(None, tmp_path, other)


def test_auto_precision_is_measured_on_cpu(monkeypatch, tiny_lm_config):
    from pocketlm.models.transformer_lm import TransformerLM

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    sample = torch.randint(3, tiny_lm_config.vocab_size, (2, 32))
    choice, info = choose_precision("auto", lambda: TransformerLM(tiny_lm_config), sample)
    assert info["probe_fp32_matmul_gflops"] > 0 and info["probe_bf16_matmul_gflops"] > 0
    if info["probe_bf16_matmul_gflops"] < info["probe_fp32_matmul_gflops"]:  # an emulating CPU: no step is timed
        assert choice == "no" and "probe_bf16_step_s" not in info
    else:
        assert info["probe_fp32_step_s"] > 0 and info["probe_bf16_step_s"] > 0
        assert choice == ("bf16" if info["probe_bf16_step_s"] < info["probe_fp32_step_s"] else "no")
    assert describe_probe(choice, info).endswith("-> bf16" if choice == "bf16" else "-> fp32")
    assert choose_precision("no", None, sample) == ("no", {})
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # what `accelerate launch` sets from a GPU config
    assert choose_precision("auto", None, sample) == ("fp16", {})


@pytest.mark.parametrize("bf16_gflops, steps_timed", [(1.0, False), (400.0, True)])
def test_auto_precision_times_training_steps_only_where_bf16_matmuls_keep_up(monkeypatch, tiny_lm_config, bf16_gflops,
                                                                             steps_timed):
    """A CPU that emulates bf16 (its matmul far below fp32's) keeps fp32 at once; the step probe there would take
    minutes. Where bf16 matmuls are as fast, the real model's training step decides."""
    from pocketlm.models.transformer_lm import TransformerLM
    from pocketlm.training import precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(precision, "matmul_peak", lambda dtype, **_: bf16_gflops if dtype == torch.bfloat16 else 100.0)
    built = []
    sample = torch.randint(3, tiny_lm_config.vocab_size, (2, 32))
    choice, info = choose_precision("auto", lambda: built.append(1) or TransformerLM(tiny_lm_config), sample)
    assert bool(built) == steps_timed and ("probe_bf16_step_s" in info) == steps_timed
    if not steps_timed:
        assert choice == "no"
        assert describe_probe(choice, info) == ("precision: bf16 matmul 1.0 GFLOP/s against fp32 100.0 "
                                                "(bf16 emulated on this CPU) -> fp32")


def test_script_errors_are_one_line(monkeypatch, capsys, tmp_path):
    def run_script(*args):
        monkeypatch.setattr(sys, "argv", ["pretrain.py", *args])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(REPO / "training_scripts/pretrain.py"), run_name="__main__")
        return exit_.value.code, capsys.readouterr().err

    code, err = run_script("--preset", "fastest")
    assert code == 2 and "argument --preset: invalid choice: 'fastest'" in err
    code, err = run_script("--preset", "smoke", "--data_dir", str(tmp_path / "nothing"))
    assert code == 2 and err.startswith("error: prepared corpus not found") and err.count("\n") == 1
    code, err = run_script("--preset", "smoke", "--masking", "often")
    assert code == 2 and err == "error: --masking must be one of dynamic, static, none, got 'often'\n"


def _pretrain_command(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "training_scripts/pretrain.py"), "--preset", "smoke", "--data_dir", str(data_dir),
        "--output_dir", str(output_dir), "--publish", "false", "--masking", "dynamic", *extra,
    ]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(prepared_corpus, tmp_path):
    """Kill -9 mid-run, start again: it continues from the last checkpoint and ends where a clean run ends."""
    steps = ["--max_steps", "30", "--save_steps", "5", "--logging_steps", "5", "--eval_steps", "10", "--generation_prompts", "1"]
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_pretrain_command(prepared_corpus, interrupted, *steps), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    progress = interrupted / "last" / "progress.json"
    deadline = time.monotonic() + 120
    while not progress.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    killed_at = json.loads((interrupted / "last" / "trainer_state.json").read_text())["global_step"]
    assert 5 <= killed_at < 30, output

    resumed = subprocess.run(_pretrain_command(prepared_corpus, interrupted, *steps), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {interrupted / 'last'}: step {killed_at}" in resumed.stdout

    clean = tmp_path / "clean"
    straight = subprocess.run(_pretrain_command(prepared_corpus, clean, *steps), env=_env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    history = json.loads((interrupted / "metrics.json").read_text())
    reference = json.loads((clean / "metrics.json").read_text())
    assert [r["step"] for r in history] == [r["step"] for r in reference]  # no step lost or repeated
    logged = [r["loss"] for r in history if "loss" in r and r["step"] > killed_at]
    expected = [r["loss"] for r in reference if "loss" in r and r["step"] > killed_at]
    assert logged and logged == pytest.approx(expected, rel=1e-4)  # same data order, masks and updates after the resume
    final, final_reference = history[-1], reference[-1]
    assert final["step"] == 30 and final["eval_ppl"] == pytest.approx(final_reference["eval_ppl"], rel=1e-4)
    assert [r["step"] for r in history if "eval_ppl" in r] == [10, 20, 30]  # --eval_steps: a curve within the epoch
    bits_per_byte = [r["eval_bits_per_byte"] for r in history if "eval_ppl" in r]
    assert bits_per_byte == pytest.approx([r["eval_bits_per_byte"] for r in reference if "eval_ppl" in r], rel=1e-4)

    # The best checkpoint (chosen by the callback) is a loadable Llama model, and the run wrote its curves.
    best = json.loads((interrupted / "best" / "best_metrics.json").read_text())
    assert best["eval_ppl"] == min(r["eval_ppl"] for r in history if "eval_ppl" in r)
    assert (interrupted / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert {"gen_distinct_1", "gen_distinct_2", "eval_ppl", "train_loss"} <= set(final)


def test_eval_steps_add_points_within_an_epoch_and_never_evaluate_a_step_twice(prepared_corpus, tmp_path):
    """Two epochs with --eval_steps half an epoch: a validation mid-epoch and one at each epoch's end (where the
    periodic point falls on it, the epoch's end evaluates once); callbacks hear of an epoch end only at one."""
    from transformers import TrainerCallback

    from pocketlm.training.pretrain import train

    class Events(TrainerCallback):
        def __init__(self):
            self.evaluated, self.epoch_ends = [], []

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluated.append(state.global_step)

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epoch_ends.append(state.global_step)

    chunks = sum(1 for _ in (prepared_corpus / "train.jsonl").open())
    batch = next(b for b in range(16, 64) if (chunks // b) % 2 == 0)  # an even epoch: its end is a periodic point
    steps_per_epoch = chunks // batch
    half = steps_per_epoch // 2
    events = Events()
    args = PretrainArguments(
        data_dir=str(prepared_corpus), output_dir=str(tmp_path / "run"), d_model=32, n_layers=2, n_heads=2, d_ff=64,
        num_train_epochs=2, per_device_train_batch_size=batch, eval_steps=half, eval_max_chunks=8, logging_steps=1,
        save_steps=1000, warmup_steps=2, mixed_precision="no", generation_prompts=0, publish=False,
    )
    result = train(args, callbacks=[events], log=lambda message: None)
    expected = [half, steps_per_epoch, steps_per_epoch + half, 2 * steps_per_epoch]
    assert events.evaluated == [r["step"] for r in result.history if "eval_ppl" in r] == expected
    assert events.epoch_ends == [steps_per_epoch, 2 * steps_per_epoch]


def test_best_checkpoint_keeps_the_better_model_when_a_later_evaluation_is_worse(tiny_lm_config, tiny_tokenizer, tmp_path):
    """Three evaluations through the loop's CallbackHandler: better, worse, better again."""
    from safetensors.torch import load_file
    from transformers import TrainerControl, TrainerState

    from pocketlm.models.transformer_lm import TransformerLM
    from pocketlm.training.callbacks import BestCheckpointCallback
    from pocketlm.training.pretrain import callback_handler

    model = TransformerLM(tiny_lm_config)
    handler = callback_handler([BestCheckpointCallback(tmp_path / "best")], model, tiny_tokenizer, optimizer=None)
    state, control = TrainerState(), TrainerControl()
    weights = {}

    def evaluate_at(step: int, ppl: float) -> dict:
        with torch.no_grad():  # each evaluation sees other weights
            model.lm_head.weight.add_(0.01 * step)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
        state.global_step, state.epoch = step, float(step)
        handler.on_evaluate(PretrainArguments(), state, control, metrics={"eval_ppl": ppl, "eval_loss": math.log(ppl)})
        saved = load_file(tmp_path / "best" / "model.safetensors")
        return {"step": json.loads((tmp_path / "best" / "best_metrics.json").read_text())["step"], "saved": saved}

    def same(saved: dict, step: int) -> bool:
        return all(torch.equal(saved[k], weights[step][k]) for k in saved)

    first = evaluate_at(1, ppl=50.0)
    assert first["step"] == 1 and same(first["saved"], 1)
    worse = evaluate_at(2, ppl=60.0)
    assert worse["step"] == 1 and same(worse["saved"], 1) and not same(worse["saved"], 2)  # the better one is kept
    assert (state.best_metric, state.best_global_step) == (50.0, 1)
    better = evaluate_at(3, ppl=40.0)
    assert better["step"] == 3 and same(better["saved"], 3)
    assert (state.best_metric, state.best_global_step) == (40.0, 3)
    assert (tmp_path / "best" / "tokenizer.json").is_file() and not list(tmp_path.glob(".*staging"))


@pytest.mark.slow
def test_torch_compile_compiles_the_decoder_layers_and_trains_as_eager_does(prepared_corpus, tmp_path):
    """--torch_compile compiles each decoder layer in place (regional compilation): the same losses as eager to
    float tolerance, evaluation and sampling run eager, and the best checkpoint is a plain Llama folder."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM, TrainerCallback

    from pocketlm.training.pretrain import train

    class Losses(TrainerCallback):
        def __init__(self):
            self.losses = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    results = {}
    counters.clear()
    for compiled in (False, True):
        losses = Losses()
        args = PretrainArguments(
            data_dir=str(prepared_corpus), output_dir=str(tmp_path / f"run-{compiled}"), d_model=32, n_layers=2,
            n_heads=2, d_ff=64, max_steps=3, per_device_train_batch_size=4, eval_max_chunks=4, logging_steps=1,
            save_steps=1000, warmup_steps=1, mixed_precision="no", generation_prompts=1, generation_tokens=4,
            publish=False, torch_compile=compiled,
        )
        results[compiled] = (train(args, callbacks=[losses], log=lambda message: None), losses.losses)
    graphs = counters["stats"]["unique_graphs"]
    (eager, eager_losses), (compiled, compiled_losses) = results[False], results[True]
    assert len(compiled_losses) == len(eager_losses) == 3
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled.summary["best_eval_ppl"] == pytest.approx(eager.summary["best_eval_ppl"], rel=1e-4)
    assert graphs > 0  # dynamo did compile
    model = AutoModelForCausalLM.from_pretrained(compiled.best_dir)  # no "_orig_mod." prefixes
    assert model.config.num_hidden_layers == 2
