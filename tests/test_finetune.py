"""Fine-tuning lab: PEFT classifier (LoRA + bottleneck adapters), AWP, mixout, Trainer configuration, scripts.

A real MiniLM truncated to one layer (real tokenizer, real pretrained weights of that layer) and a few
dozen real SST-2 sentences keep every test to seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments, set_seed

from pocketlm import BASE_ENCODER
from pocketlm.data.classification import ClassificationDataArguments, load_tokenized_splits, padding_collator
from pocketlm.errors import ConfigError
from pocketlm.hub import ArtifactNotFoundError, resolve
from pocketlm.models.adapters import ADAPTER_MODULE_NAME, adapter_parameter_count
from pocketlm.models.mixout import MixLinear, apply_mixout
from pocketlm.models.peft_classifier import ClassifierSpec, build_classifier, load_classifier, parameter_counts, save_classifier
from pocketlm.settings import REPO_ROOT
from pocketlm.training.awp import AWP
from pocketlm.training.classification_metrics import classification_scores, make_compute_metrics
from pocketlm.training.classifier import RegularisationArguments, build_trainer

HIDDEN, LAYERS, LABELS = 384, 1, 2


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """The real MiniLM cut to its first layer, without dropout (so runs are comparable), saved as a folder."""
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("minilm-1layer")
    model = AutoModel.from_pretrained(resolve(BASE_ENCODER), num_hidden_layers=LAYERS,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve(BASE_ENCODER)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    return AutoTokenizer.from_pretrained(tiny_encoder)


@pytest.fixture(scope="module")
def sst2(tokenizer):
    splits, names = load_tokenized_splits(ClassificationDataArguments(max_train_samples=32, max_eval_samples=16), tokenizer)
    return splits, names


def spec_for(encoder: str, **overrides) -> ClassifierSpec:
    return ClassifierSpec(model_name_or_path=encoder, **{"lora_dropout": 0.0, "mixout_p": 0.0, **overrides})


def training_args(tmp_path, **overrides) -> TrainingArguments:
    defaults = dict(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8, learning_rate=1e-3,
                    num_train_epochs=1, save_strategy="no", eval_strategy="no", logging_strategy="no", seed=0,
                    disable_tqdm=True, use_cpu=True)
    return TrainingArguments(**{**defaults, **overrides})


# ---------------------------------------------------------------- preprocessing


def test_tokenisation_truncates_to_128_and_pads_per_batch(tokenizer):
    splits, names = load_tokenized_splits(ClassificationDataArguments(max_train_samples=200, max_eval_samples=4), tokenizer)
    lengths = [len(ids) for ids in splits["train"]["input_ids"]]
    assert names == ["negative", "positive"]
    assert max(lengths) <= 128 and min(lengths) < max(lengths)  # truncated, not padded in the data set
    long_text = {"text": "word " * 400, "label": 0}
    from pocketlm.data.classification import tokenize_classification
    import datasets

    assert len(tokenize_classification(datasets.Dataset.from_list([long_text]), tokenizer)[0]["input_ids"]) == 128
    batch = padding_collator(tokenizer)([splits["train"][i] for i in range(4)])
    assert batch["input_ids"].shape[1] == max(lengths[:4])  # padded to the batch's longest, not to 128
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}


class GradientRecorder(TrainerCallback):
    """Copies every trainable parameter's gradient just before the optimiser steps (after accumulation)."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None})


def first_step_gradients(encoder, tokenizer, sst2, tmp_path, batch, accumulation):
    splits, names = sst2
    set_seed(0)
    model = build_classifier(spec_for(encoder), names)
    args = training_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         max_steps=1, max_grad_norm=0.0)
    trainer = build_trainer(model, tokenizer, args, splits["train"], None, names, RegularisationArguments(awp_eps=0.0, early_stopping_patience=0))
    recorder = GradientRecorder(model)
    trainer.add_callback(recorder)
    trainer.train()
    return recorder.grads[0]


def test_accumulated_gradients_equal_large_batch_gradients(tiny_encoder, tokenizer, sst2, tmp_path):
    large = first_step_gradients(tiny_encoder, tokenizer, sst2, tmp_path / "a", batch=8, accumulation=1)
    accumulated = first_step_gradients(tiny_encoder, tokenizer, sst2, tmp_path / "b", batch=2, accumulation=4)
    single = first_step_gradients(tiny_encoder, tokenizer, sst2, tmp_path / "c", batch=2, accumulation=1)
    assert large.keys() == accumulated.keys() and len(large) > 10
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=1e-4, atol=1e-7, msg=name)
    assert any(not torch.allclose(single[n], large[n], atol=1e-6) for n in large)  # the comparison can fail


# ---------------------------------------------------------------- Trainer configuration: what trains


def expected_trainable(spec: ClassifierSpec) -> dict[str, int]:
    """Counted from the architecture on paper, independently of the model code."""
    lora = LAYERS * 4 * spec.lora_r * (HIDDEN + HIDDEN) if spec.uses_lora else 0  # q, k, v, o: A (r×h) + B (h×r)
    adapters = LAYERS * adapter_parameter_count(HIDDEN, spec.adapter_size) if spec.uses_adapters else 0
    head = (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * LABELS + LABELS)  # BERT pooler dense + classifier
    return {"lora": lora, "adapters": adapters, "head": head}


@pytest.mark.parametrize("method", ["lora+adapters", "lora", "adapters"])
def test_optimizer_receives_exactly_lora_adapter_and_head_parameters(tiny_encoder, tokenizer, sst2, tmp_path, method):
    splits, names = sst2
    spec = spec_for(tiny_encoder, method=method, mixout_p=0.1)
    model = build_classifier(spec, names)
    trainer = build_trainer(model, tokenizer, training_args(tmp_path), splits["train"], None, names,
                            RegularisationArguments(early_stopping_patience=0))
    optimizer = trainer.create_optimizer()
    by_id = {id(p): n for n, p in model.named_parameters()}
    optimised = {by_id[id(p)]: p.numel() for group in optimizer.param_groups for p in group["params"]}

    groups = {"lora": r"\.lora_[AB]\.default\.weight$",
              "adapters": rf"\.{ADAPTER_MODULE_NAME}\.modules_to_save\.default\.(down|up)\.(weight|bias)$",
              "head": r"\.(pooler\.modules_to_save\.default\.dense|classifier\.modules_to_save\.default)\.(weight|bias)$"}
    unmatched = [n for n in optimised if not any(re.search(g, n) for g in groups.values())]
    assert not unmatched, f"the optimiser also got {unmatched[:5]}"
    counted = {key: sum(v for n, v in optimised.items() if re.search(rx, n)) for key, rx in groups.items()}
    assert counted == expected_trainable(spec)
    lora_names = [n for n in optimised if re.search(groups["lora"], n)]
    assert len(lora_names) == (8 * LAYERS if spec.uses_lora else 0)  # A and B for query, key, value, attention output
    assert {re.search(r"attention\.(self\.\w+|output\.dense)", n).group(1) for n in lora_names} == (
        {"self.query", "self.key", "self.value", "output.dense"} if spec.uses_lora else set())
    trainable, total = parameter_counts(model)
    assert trainable == sum(optimised.values())
    assert sum(p.numel() for p in optimizer.param_groups[0]["params"] + optimizer.param_groups[1]["params"]) == trainable
    assert trainable / total < 0.03


def test_full_fine_tuning_trains_everything(tiny_encoder, sst2):
    model = build_classifier(spec_for(tiny_encoder, method="full"), sst2[1])
    trainable, total = parameter_counts(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


def test_saved_classifier_reloads_in_a_fresh_process_to_identical_logits(tiny_encoder, tokenizer, sst2, tmp_path):
    splits, names = sst2
    texts = ["a gripping , funny and moving film .", "dull , lifeless and far too long ."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    expected, models = {}, {}
    for method in ("lora+adapters", "adapters"):
        set_seed(0)
        spec = spec_for(tiny_encoder, method=method, mixout_p=0.1)
        model = build_classifier(spec, names)
        trainer = build_trainer(model, tokenizer, training_args(tmp_path / method, max_steps=3), splits["train"], None, names,
                                RegularisationArguments(early_stopping_patience=0))
        trainer.train()  # moves LoRA B and the adapters' up projections off zero
        save_classifier(model, tokenizer, tmp_path / f"artifact-{method}", spec)
        with torch.inference_mode():
            expected[method] = model.eval()(**batch).logits.numpy()
        models[method] = model
        adapter = next(m for n, m in model.named_modules() if n.endswith(f"{ADAPTER_MODULE_NAME}.modules_to_save.default"))
        assert adapter.up.weight.abs().sum() > 0  # the adapters changed, so identical logits mean they were saved

    script = textwrap.dedent(f"""
        import numpy as np, torch
        from pocketlm.models.peft_classifier import load_classifier
        for method in ("lora+adapters", "adapters"):
            model, tokenizer, labels = load_classifier({str(tmp_path)!r} + "/artifact-" + method)
            assert labels == {names!r}, labels
            batch = tokenizer({texts!r}, padding=True, return_tensors="pt")
            with torch.inference_mode():
                np.save({str(tmp_path)!r} + f"/reloaded-{{method}}.npy", model(**batch).logits.numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
    for method in expected:
        np.testing.assert_array_equal(np.load(tmp_path / f"reloaded-{method}.npy"), expected[method], err_msg=method)

    merged, _, _ = load_classifier(str(tmp_path / "artifact-lora+adapters"), merge_lora=True)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert sum(n.endswith(ADAPTER_MODULE_NAME) for n, _ in merged.named_modules()) == LAYERS  # adapters stay after the merge
    with torch.inference_mode():
        torch.testing.assert_close(merged(**batch).logits.numpy(), expected["lora+adapters"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- AWP


def loss_and_backward(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


def test_awp_perturbs_by_eps_times_weight_norm_and_restores_exactly(tiny_encoder, tokenizer, sst2):
    splits, names = sst2
    set_seed(0)
    model = build_classifier(spec_for(tiny_encoder, method="full"), names)
    batch = padding_collator(tokenizer)([splits["train"][i] for i in range(8)])
    loss_and_backward(model, batch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp = AWP(model, eps=0.01)
    moved = awp.perturb()
    assert moved == len([n for n, p in model.named_parameters() if p.ndim >= 2 and p.grad is not None and p.grad.norm() > 0])
    changed = 0
    for name, param in model.named_parameters():
        delta = (param.detach() - before[name])
        if param.ndim < 2:
            assert torch.equal(delta, torch.zeros_like(delta)), f"{name} is not a weight matrix and must not move"
        elif delta.abs().sum() > 0:
            changed += 1
            assert torch.isclose(delta.norm(), 0.01 * before[name].norm(), rtol=1e-3), name
            assert torch.dot(delta.flatten(), param.grad.flatten()) > 0, f"{name} moved against its gradient"
    assert changed == moved > 0
    perturbed_loss = model(**batch).loss.item()
    awp.restore()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} was not restored bit for bit"
    assert perturbed_loss > model(**batch).loss.item()  # an ascent step


def test_awp_without_gradients_changes_nothing(tiny_encoder, sst2):
    model = build_classifier(spec_for(tiny_encoder), sst2[1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp = AWP(model, eps=0.01)
    with awp.perturbed() as moved:
        assert moved == 0
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ConfigError, match="epsilon"):
        AWP(model, eps=0.0)


def test_awp_runs_in_the_second_half_of_each_epoch(tiny_encoder, tokenizer, sst2, tmp_path):
    splits, names = sst2
    model = build_classifier(spec_for(tiny_encoder), names)
    trainer = build_trainer(model, tokenizer, training_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2),
                            splits["train"], None, names, RegularisationArguments(awp_eps=0.01, early_stopping_patience=0))
    epochs_at_awp = []
    original = trainer.awp.perturb
    trainer.awp.perturb = lambda: (epochs_at_awp.append(trainer.state.epoch), original())[1]
    trainer.train()
    assert trainer.state.global_step == 16  # 32 sentences / 4 per step × 2 epochs
    assert [round(e % 1, 3) for e in epochs_at_awp] == [0.5, 0.625, 0.75, 0.875] * 2
    assert trainer.awp_steps == 8


# ---------------------------------------------------------------- mixout


def test_mixout_with_p0_is_the_plain_layer():
    torch.manual_seed(0)
    linear = nn.Linear(16, 4)
    mix = MixLinear.from_linear(linear, p=0.0).train()
    x = torch.randn(5, 16)
    torch.testing.assert_close(mix(x), linear(x), rtol=0, atol=0)
    mix(x).sum().backward()
    linear(x).sum().backward()
    torch.testing.assert_close(mix.weight.grad, linear.weight.grad, rtol=0, atol=0)
    model = nn.Sequential(nn.Linear(4, 4))
    assert apply_mixout(model, 0.0, ["0"]) == [] and type(model[0]) is nn.Linear


def test_mixout_mixes_towards_target_in_training_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    mix = MixLinear.from_linear(linear, p=0.1)
    with torch.no_grad():
        mix.weight.add_(1.0)  # fine-tuning moved the weights away from the target
    x = torch.randn(8, 64)
    mix.eval()
    first, second = mix(x), mix(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, x @ mix.weight.T + mix.bias, rtol=0, atol=1e-5)  # eval: the current weights
    mix.train()
    a, b = mix(x), mix(x)
    assert not torch.equal(a, b)  # a fresh Bernoulli mask each call
    from pocketlm.models.mixout import mixout

    samples = torch.stack([mixout(mix.weight, mix.target, 0.1, True) for _ in range(400)])
    dropped = torch.isclose(samples, mix.target.expand_as(samples), atol=1e-5)  # a dropped entry is exactly the target
    kept = torch.isclose(samples, ((mix.weight - 0.1 * mix.target) / 0.9).expand_as(samples), atol=1e-5)
    assert torch.all(dropped ^ kept)
    assert 0.87 < kept.float().mean() < 0.93  # ~1 - p of the entries keep the fine-tuned weight
    torch.testing.assert_close(samples.mean(0), mix.weight, rtol=0, atol=0.1)  # unbiased: E[W_mix] = W
    assert "target" not in mix.state_dict()  # saves as a plain nn.Linear


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_mixout_probability_outside_0_1_raises(p):
    with pytest.raises(ConfigError, match=r"mixout probability must be in \[0, 1\)"):
        MixLinear(4, 4, p=p)
    with pytest.raises(ConfigError, match="mixout"):
        ClassifierSpec(mixout_p=p)


def test_mixout_replaces_the_head_linear_layers(tiny_encoder, sst2):
    model = build_classifier(spec_for(tiny_encoder, method="full", mixout_p=0.1), sst2[1])
    mixed = sorted(n for n, m in model.named_modules() if isinstance(m, MixLinear))
    assert mixed == ["bert.pooler.dense", "classifier"]
    pretrained = build_classifier(spec_for(tiny_encoder, method="full"), sst2[1])
    assert torch.equal(model.bert.pooler.dense.target, pretrained.bert.pooler.dense.weight)  # towards the pretrained pooler


# ---------------------------------------------------------------- callbacks and metrics


def test_compute_metrics_macro_and_per_class():
    from transformers import EvalPrediction

    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[predictions] * 5.0
    scores = make_compute_metrics(["neg", "pos", "Sci/Tech"])(EvalPrediction(predictions=logits, label_ids=labels))
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["precision_neg"] == 1.0 and scores["recall_neg"] == pytest.approx(2 / 3)
    assert scores["precision_pos"] == pytest.approx(1 / 2) and scores["recall_pos"] == pytest.approx(1 / 2)
    assert scores["precision_sci_tech"] == pytest.approx(1 / 2) and scores["recall_sci_tech"] == 1.0
    f1 = [0.8, 0.5, 2 / 3]
    assert scores["f1_neg"] == pytest.approx(f1[0])
    assert scores["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert scores["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert classification_scores([1, 1], [1, 1], ["a", "b"])["f1_a"] == 0.0  # absent class: 0, no warning


def test_early_stopping_stops_after_three_evaluations_without_f1_gain(tiny_encoder, tokenizer, sst2, tmp_path):
    splits, names = sst2
    scripted_f1 = iter([0.50, 0.60, 0.60, 0.59, 0.55, 0.90, 0.95])  # best at epoch 2, then three without a gain
    model = build_classifier(spec_for(tiny_encoder), names)
    args = training_args(tmp_path, num_train_epochs=7, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                         metric_for_best_model="f1_macro", per_device_train_batch_size=16)
    trainer = build_trainer(model, tokenizer, args, splits["train"], splits["validation"], names, RegularisationArguments(awp_eps=0.0))
    trainer.compute_metrics = lambda prediction: {"f1_macro": next(scripted_f1)}
    trainer.train()
    assert trainer.state.epoch == 5  # epochs 3, 4 and 5 brought no gain over 0.60
    assert [round(r["eval_f1_macro"], 2) for r in trainer.state.log_history if "eval_f1_macro" in r] == [0.5, 0.6, 0.6, 0.59, 0.55]
    assert trainer.state.best_metric == 0.6 and trainer.state.best_model_checkpoint.endswith("checkpoint-4")


def test_early_stopping_needs_f1_as_the_metric(tiny_encoder, tokenizer, sst2, tmp_path):
    splits, names = sst2
    model = build_classifier(spec_for(tiny_encoder), names)
    with pytest.raises(ConfigError, match="--metric_for_best_model f1_macro"):
        build_trainer(model, tokenizer, training_args(tmp_path, eval_strategy="epoch"), splits["train"], splits["validation"],
                      names, RegularisationArguments())


# ---------------------------------------------------------------- scripts: bad input, and a whole run


def run_script(script, argv, capsys) -> tuple[int, str]:
    import importlib.util

    from pocketlm.cli import run

    module_spec = importlib.util.spec_from_file_location(Path(script).stem, REPO_ROOT / "training_scripts" / script)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up while the class is created
    module_spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: module.main(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "imdb-nope"], r"^error: unknown data set 'imdb-nope'; known: .*sst2"),
        (["--label_column", "sentiment"], r"^error: .*train\.csv: no column 'sentiment' \(columns: text, label\)"),
        (["--model_name_or_path", "./checkpoints/does-not-exist"], r"^error: path does not exist: \./checkpoints/does-not-exist"),
        (["--resume_from_checkpoint", "./checkpoints/nope"], r"^error: path does not exist: \./checkpoints/nope \(--resume_from_checkpoint\)$"),
        (["--mixout_p", "1"], r"^error: mixout probability must be in \[0, 1\), got 1.0 \(--mixout_p\)"),
    ],
)
def test_finetune_script_bad_input_is_one_line(argv, message, capsys, tmp_path):
    code, err = run_script("finetune_classifier.py", [*argv, "--output_dir", str(tmp_path)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err.strip()), err


def test_evaluate_script_missing_checkpoint_is_one_line(capsys, tmp_path):
    missing = str(tmp_path / "no-such-model")
    code, err = run_script("evaluate_classifier.py", ["--model", missing], capsys)
    assert code == 2 and err.strip() == f"error: path does not exist: {missing}"
    with pytest.raises(ArtifactNotFoundError):
        load_classifier("pocketlm/never-published")


def test_finetune_script_trains_evaluates_and_publishes(tiny_encoder, tmp_path, capsys):
    from pocketlm.hub import hub_dir

    out = tmp_path / "run"
    argv = ["--model_name_or_path", tiny_encoder, "--dataset", "sst2", "--max_train_samples", "48", "--max_eval_samples", "24",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--output_dir", str(out), "--repo_id", "pocketlm/test-sst2-peft", "--disable_tqdm", "true", "--use_cpu", "true"]
    code, err = run_script("finetune_classifier.py", argv, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["awp_steps"] > 0 and summary["global_steps"] == 6  # 48 / (8 × 2) × 2 epochs
    assert 0 <= summary["test"]["f1_macro"] <= 1 and summary["test"]["f1_macro"] == pytest.approx(
        json.loads((out / "classification_report_test.json").read_text())["macro avg"]["f1-score"])
    assert (out / "classification_report_validation_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "curves.png").is_file()
    folder = hub_dir() / "pocketlm/test-sst2-peft"
    card = (folder / "README.md").read_text()
    assert "f1_macro" in card and "lora+adapters" in card and "library_name: peft" in card
    assert {"adapter_model.safetensors", "adapter_config.json", "pocketlm_classifier.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}

    code, err = run_script("evaluate_classifier.py", ["--model", "pocketlm/test-sst2-peft", "--split", "test",
                                                      "--output_dir", str(tmp_path / "eval")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "classification_report_test.json").read_text())
    assert report["examples"] == 1821  # the whole test split
    assert "| negative |" in (tmp_path / "eval" / "classification_report_test.md").read_text()

    # the run folder is claimed: another method in it would resume these checkpoints, so it is refused in one line
    code, err = run_script("finetune_classifier.py", [*argv, "--method", "lora"], capsys)
    last_line = err.strip().splitlines()[-1]  # (after the data's progress bars)
    assert code == 2 and last_line.startswith("error: ") and "holds a run whose model settings differ from this one" in last_line


# ---------------------------------------------------------------- memory estimate behind the 4 GB batch × accumulation


def test_saved_activations_grow_with_the_batch_and_exclude_weights(tiny_encoder, tokenizer, sst2):
    from pocketlm.training.memory import saved_activation_bytes, training_memory

    model = build_classifier(spec_for(tiny_encoder), sst2[1])
    texts = ["a long and winding sentence about a film " * 6] * 8
    batch = lambda n: {**tokenizer(texts[:n], truncation=True, max_length=64, padding="max_length", return_tensors="pt"),  # noqa: E731
                       "labels": torch.zeros(n, dtype=torch.long)}
    two, eight = saved_activation_bytes(model, batch(2)), saved_activation_bytes(model, batch(8))
    assert 3.5 < eight / two <= 4.0  # linear in the batch (a constant part, e.g. the head's inputs, is tiny)
    memory = training_memory(model, batch(2))
    trainable, _ = parameter_counts(model)
    assert memory.gradients == 4 * trainable and memory.optimizer_state == 8 * trainable
    assert memory.activations == two and memory.weights > 4 * 13_000_000  # embeddings + one layer, fp32


def test_batch_plan_splits_the_effective_batch_into_what_fits():
    from pocketlm.training.memory import MiB, batch_plan

    roomy = batch_plan(fixed_bytes=100 * MiB, activation_bytes_per_example=30 * MiB, budget_bytes=3500 * MiB)
    assert roomy["largest_batch_that_fits"] == 90 and (roomy["per_device_batch"], roomy["gradient_accumulation_steps"]) == (32, 1)
    tight = batch_plan(fixed_bytes=1800 * MiB, activation_bytes_per_example=84 * MiB, budget_bytes=3500 * MiB)
    assert tight["largest_batch_that_fits"] == 16 and (tight["per_device_batch"], tight["gradient_accumulation_steps"]) == (16, 2)
    assert batch_plan(4000 * MiB, MiB, budget_bytes=3500 * MiB)["per_device_batch"] == 0  # does not fit at all
