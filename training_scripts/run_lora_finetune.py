"""Fine-tune the RAG generator: a copy curriculum (optional), then LoRA rank 4 on the attention layers, over 3 seeds; publish.

    python training_scripts/run_lora_finetune.py                                  # pocketlm/tiny-lm, 500 pairs, seeds 0,1,2
    python training_scripts/run_lora_finetune.py --preset quick                   # the demo's: 1 seed, 200 pairs
    python training_scripts/run_lora_finetune.py --preset smoke                   # seconds: the whole path, for tests
    python training_scripts/run_lora_finetune.py --copy_steps 200                 # first teach the LM to copy (full fine-tuning)
    HF_HUB_OFFLINE=0 python training_scripts/run_lora_finetune.py --base gpt2 --repo_id me/gpt2-rag-lora

Writes ROUGE-L (rouge-score) before/after on held-out pairs per seed to `$POCKETLM_RUNS_DIR/rag-lora/results.*`
and publishes the first seed's LoRA as `pocketlm/tiny-lm-rag-lora` with both numbers in its model card. With
`--copy_steps N`, each seed first fully fine-tunes the base for N steps on the copy curriculum
(`pocketlm.rag.copy_curriculum`) and trains its LoRA on that model; the first seed's is published as
`--copy_repo_id` (`pocketlm/tiny-lm-copy`), the base the published LoRA names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pocketlm import TINY_LM_COPY, TINY_LM_RAG_LORA
from pocketlm.cli import parse_args_with_presets, run
from pocketlm.hub import HubArguments, validate_repo_id
from pocketlm.training.distributed import check_launch, process_state
from pocketlm.rag.lora_finetune import LoraExperimentConfig, run_experiment

PRESETS = {
    "full": {},
    "smoke": {"train_pairs": 4, "eval_pairs": 4, "max_articles": 2, "held_out_fraction": 0.5, "seeds": "0",
              "num_train_epochs": 3.0, "per_device_train_batch_size": 2, "learning_rate": 2e-2},
    "quick": {"train_pairs": 200, "eval_pairs": 50, "max_articles": 12, "held_out_fraction": 0.25, "seeds": "0", "num_train_epochs": 2.0},
}


@dataclass
class ScriptArguments:
    repo_id: str = field(default=TINY_LM_RAG_LORA, metadata={"help": "hub id to publish under ('' to skip publishing)"})
    copy_repo_id: str = field(default=TINY_LM_COPY, metadata={"help": "hub id of the copy-trained base (with --copy_steps) that the published LoRA names"})

    def __post_init__(self):
        if self.repo_id:  # '' skips publishing
            validate_repo_id(self.repo_id, "--repo_id")
        validate_repo_id(self.copy_repo_id, "--copy_repo_id")


def main(args: list[str] | None = None) -> int:
    check_launch()  # under accelerate launch: the Trainer runs split their batches, the main process publishes
    config, script, hub = parse_args_with_presets((LoraExperimentConfig, ScriptArguments, HubArguments), PRESETS, "full", args,
                                                  description=__doc__)
    repo_id = hub.target(script.repo_id) if script.repo_id or hub.hub_model_id else None
    summary = run_experiment(config, repo_id, push_to_hub=hub.push_to_hub, token=hub.hub_token,
                             copy_repo_id=script.copy_repo_id)
    if not process_state().is_main_process:
        return 0
    print(summary["table"])
    print(
        f"ROUGE-L {summary['rougeL_before']:.4f} -> {summary['rougeL_after_mean']:.4f} (gain {summary['rougeL_gain']:.4f}, "
        f"seed spread {summary['rougeL_seed_spread']:.4f}: {'gain > spread' if summary['gain_exceeds_spread'] else 'gain <= spread'})"
    )
    return 0


if __name__ == "__main__":
    run(main, tcmalloc=True)
