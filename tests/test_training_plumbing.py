"""Shared script plumbing: presets, one-line errors, metrics files and curves."""

import csv
import json
from dataclasses import dataclass

import pytest

from pocketlm.cli import parse_args_with_presets, run
from pocketlm.errors import ConfigError
from pocketlm.training.callbacks import write_history


@dataclass
class Args:
    learning_rate: float = 1e-3
    epochs: int = 1


PRESETS = {"smoke": {"epochs": 1, "learning_rate": 0.1}, "quick": {"epochs": 3}}


def test_presets_set_defaults_and_flags_override():
    (args,) = parse_args_with_presets([Args], PRESETS, "quick", [])
    assert args == Args(learning_rate=1e-3, epochs=3)
    (args,) = parse_args_with_presets([Args], PRESETS, "quick", ["--preset", "smoke", "--epochs", "7"])
    assert args == Args(learning_rate=0.1, epochs=7)


def test_unknown_preset_or_flag_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args_with_presets([Args], PRESETS, "quick", ["--preset", "fast"])
    assert exit_.value.code == 2
    assert "argument --preset: invalid choice: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args_with_presets([Args], PRESETS, "quick", ["--epoch", "2", "--bogus"])
    assert "--bogus" in capsys.readouterr().err


def test_run_prints_user_errors_without_a_traceback(capsys):
    def main():
        raise ConfigError("--epochs must be positive")

    with pytest.raises(SystemExit) as exit_:
        run(main)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --epochs must be positive\n"


def test_history_files(tmp_path):
    history = [{"step": 1, "epoch": 0.5, "loss": 3.0}, {"step": 2, "epoch": 1.0, "eval_loss": 2.5, "eval_f1": 0.6}]
    write_history(history, tmp_path, "demo")
    assert json.loads((tmp_path / "metrics.json").read_text()) == history
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert rows[1]["eval_f1"] == "0.6" and rows[0]["eval_f1"] == ""
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
