"""Train the retriever's query adapter (bottleneck 32, residual, identity at start) on SQuAD train.

    python training_scripts/train_query_adapter.py                    # all 44 SQuAD-train articles
    python training_scripts/train_query_adapter.py --preset quick     # the demo's: 12 articles
    python training_scripts/build_rag_index.py --query_adapter $POCKETLM_RUNS_DIR/query-adapter   # then publish it

The frozen encoder embeds questions and paragraphs once (cached under $POCKETLM_RUNS_DIR/embedding-cache);
only the adapter trains. Writes the adapter, metrics.json/csv, curves.png and results.json (recall@1/5/10 on
held-out SQuAD-train articles and on the 300 dev questions, stock vs adapter) to --output_dir.
"""

from __future__ import annotations

from pocketlm.cli import parse_args_with_presets, run
from pocketlm.training.distributed import check_launch, process_state
from pocketlm.rag.adapter_training import AdapterExperimentConfig, train_and_save_adapter

PRESETS = {
    "full": {},
    "quick": {"max_articles": 12, "held_out_fraction": 0.25, "measure_on_dev": False},
}


def main(args: list[str] | None = None) -> int:
    check_launch()  # under accelerate launch: the processes split every batch, the main one writes
    (config,) = parse_args_with_presets((AdapterExperimentConfig,), PRESETS, "full", args, description=__doc__)
    results = train_and_save_adapter(config)
    if not process_state().is_main_process:
        return 0
    print(results["table"])
    print(f"best held-out epoch: {results['held_out']['best_epoch']}")
    return 0


if __name__ == "__main__":
    run(main, tcmalloc=True)
