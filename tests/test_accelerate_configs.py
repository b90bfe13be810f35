"""Every file in accelerate_configs/ is read by accelerate's own launcher code, and says what its comment says.

The CPU configs also launch: cpu.yaml in tests/test_pretrain_e2e.py, cpu_multiprocess.yaml in tests/test_distributed.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
# name -> (distributed type, processes, machines, use_cpu, mixed precision)
EXPECTED = {
    "cpu.yaml": ("NO", 1, 1, True, "no"),
    "cpu_multiprocess.yaml": ("MULTI_GPU", 2, 1, True, "no"),  # torchrun launcher; the launch check turns on gloo
    "single_gpu_4gb.yaml": ("NO", 1, 1, False, "fp16"),
    "multi_gpu_ddp.yaml": ("MULTI_GPU", 2, 1, False, "bf16"),
    "fsdp.yaml": ("FSDP", 2, 1, False, "bf16"),
    "multi_node.yaml": ("MULTI_GPU", 16, 2, False, "bf16"),
}


def _validated(config: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    return _validate_launch_command(args)


def test_every_config_is_known():
    assert sorted(c.name for c in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_accelerate_accepts_the_config(config):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils.launch import prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    loaded = load_config_from_file(str(config))
    args, defaults, _ = _validated(config)
    kind, processes, machines, use_cpu, precision = EXPECTED[config.name]
    assert (loaded.distributed_type.value, loaded.num_processes, loaded.num_machines, bool(loaded.use_cpu),
            str(loaded.mixed_precision)) == (kind, processes, machines, use_cpu, precision)
    # What the launcher would hand the processes (the same functions `accelerate launch` calls; nothing starts).
    if args.multi_gpu or args.use_fsdp:
        env = prepare_multi_gpu_env(args)
        assert int(args.nproc_per_node) * machines == processes
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == precision
    if config.name == "multi_node.yaml":
        assert args.main_process_ip and args.main_process_port and args.nnodes == "2"


def test_fsdp_wraps_the_layer_class_of_the_model_being_trained(monkeypatch):
    """fsdp.yaml lists no class: accelerate takes the model's `_no_split_modules`, so one config serves every model
    (it used to list DecoderLayer,LlamaDecoderLayer,BertLayer, and accelerate raised for the two each model lacks)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from pocketlm.models.transformer_lm import DecoderLayer, TransformerLM, TransformerLMConfig

    args, _, _ = _validated(REPO / "accelerate_configs" / "fsdp.yaml")
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in os.environ

    def wrapped(model):
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_auto_wrap_policy(model)
        return {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}

    lm = TransformerLM(TransformerLMConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=16))
    assert wrapped(lm) == {DecoderLayer.__name__}
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    assert wrapped(llama) == {"LlamaDecoderLayer"}
    # the encoders' task heads declare their layers too, so one config shards the classifier and QA per layer
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32))
    assert "BertLayer" in wrapped(bert)
