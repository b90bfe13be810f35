"""Train the query adapter on SQuAD train (question, paragraph) pairs; measure it; save it for the index.

The encoder stays frozen, so every question and paragraph is embedded once (and cached); only the
adapter's 25k parameters train, on CPU, in seconds per epoch. Whole articles are held out to choose the
epoch (the dev set's 24 articles are not in SQuAD train either), and the dev questions are only ever used
to *measure* the final adapter — never to train or select it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pocketlm.benchmarking import markdown_table
from pocketlm.io import write_json
from pocketlm.rag.corpus import rag_dev, squad_train_set, split_by_title
from pocketlm.rag.embeddings import encode, encoder_id, load_encoder
from pocketlm.rag.query_adapter import SELECT_BY, AdapterTrainingConfig, retrieval_recall, train_query_adapter
from pocketlm.settings import runs_dir
from pocketlm.training.callbacks import write_history
from pocketlm.training.distributed import process_state


@dataclass
class AdapterExperimentConfig:
    encoder: str = field(default="minilm", metadata={"help": "frozen sentence encoder (the index's)"})
    bottleneck: int = field(default=32, metadata={"help": "adapter bottleneck size"})
    epochs: int = field(default=10, metadata={"help": "training epochs (the epoch with the best held-out MRR@10 is kept)"})
    batch_size: int = field(default=256)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=1e-2)
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE softmax temperature"})
    held_out_fraction: float = field(default=0.1, metadata={"help": "share of SQuAD-train articles held out to pick the epoch"})
    max_articles: int = field(default=0, metadata={"help": "use only this many SQuAD-train articles (0: all 44)"})
    measure_on_dev: bool = field(default=True, metadata={"help": "report recall on the 300 dev questions (913 passages), stock vs adapter"})
    seed: int = field(default=0)
    output_dir: str | None = field(default=None, metadata={"help": "where the adapter goes (default: $POCKETLM_RUNS_DIR/query-adapter)"})

    def training(self) -> AdapterTrainingConfig:
        return AdapterTrainingConfig(
            self.bottleneck, self.epochs, self.batch_size, self.learning_rate, self.weight_decay, self.temperature, self.seed
        )


def train_and_save_adapter(config: AdapterExperimentConfig) -> dict:
    """Train, save the adapter (+ metrics.json/csv, curves.png, results.json) in the output folder; return results."""
    output_dir = Path(config.output_dir or runs_dir() / "query-adapter")
    data = squad_train_set()
    rows = list(range(len(data.questions)))
    if config.max_articles:
        chosen = set(random.Random(config.seed).sample(sorted(set(data.titles)), config.max_articles))
        rows = [i for i in rows if data.titles[i] in chosen]
    train_local, held_local = split_by_title([data.titles[i] for i in rows], config.held_out_fraction, config.seed)
    train_rows, held_rows = [rows[i] for i in train_local], [rows[i] for i in held_local]
    passage_rows = sorted({data.positives[i] for i in rows})
    position = {r: i for i, r in enumerate(passage_rows)}

    encoder = load_encoder(config.encoder)
    passages = encode(encoder, [data.passages[r].text for r in passage_rows], show_progress=True, cache=True)
    questions = encode(encoder, [data.questions[i] for i in rows], show_progress=True, cache=True)
    local = {r: i for i, r in enumerate(rows)}
    positives = np.array([position[data.positives[i]] for i in rows])
    tr = np.array([local[i] for i in train_rows])
    ho = np.array([local[i] for i in held_rows])
    processes = process_state()  # under accelerate launch: the processes split each batch
    adapter, history = train_query_adapter(questions[tr], positives[tr], passages, config.training(), questions[ho],
                                           positives[ho], processes=processes)

    best = max(history, key=lambda r: r.get(SELECT_BY, -1))
    results = {
        "config": asdict(config),
        "encoder": encoder_id(config.encoder),
        "training": {"questions": len(tr), "held_out_questions": len(ho), "passages": len(passage_rows), "articles": len({data.titles[i] for i in rows})},
        "held_out": {"stock": {k.removeprefix("eval_"): v for k, v in history[0].items() if k.startswith("eval_")},
                     "adapter": {k.removeprefix("eval_"): v for k, v in best.items() if k.startswith("eval_")},
                     "best_epoch": best["step"]},
    }
    if config.measure_on_dev:
        dev_passages, dev_questions = rag_dev()
        dev_p = encode(encoder, [p.text for p in dev_passages], show_progress=True, cache=True)
        dev_q = encode(encoder, [q.question for q in dev_questions], cache=True)
        row_of = {p.id: i for i, p in enumerate(dev_passages)}
        gold = np.array([row_of[q.passage_id] for q in dev_questions])
        results["dev"] = {"stock": retrieval_recall(dev_q, dev_p, gold), "adapter": retrieval_recall(adapter.transform(dev_q), dev_p, gold)}

    rows_md = [{"questions": f"{split} / {name}", **values}
               for split in ("held_out", "dev") if split in results
               for name, values in results[split].items() if isinstance(values, dict)]
    results["table"] = markdown_table(rows_md, ["questions", "recall@1", "recall@5", "recall@10", "mrr@10"], ".3f")
    if processes.is_main_process:  # (every process holds the same adapter)
        adapter.save(output_dir, encoder=encoder_id(config.encoder), training=asdict(config.training()))
        write_history(history, output_dir, title="query adapter (held-out SQuAD-train articles)")
        write_json(output_dir / "results.json", results)
    return results
