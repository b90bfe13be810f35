"""Export the QA model to ONNX (fp32 + dynamic int8), check EM/F1 of every runtime, publish `pocketlm/minilm-squad-onnx`.

    python training_scripts/export_qa_onnx.py                              # full validation set
    python training_scripts/export_qa_onnx.py --preset demo                # 300 questions, for `make demo`
    python training_scripts/export_qa_onnx.py --model distilbert-base-cased-distilled-squad --output_repo me/db-onnx

`--model` is any extractive-QA checkpoint (BERT, DistilBERT, ...): a repo id or a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX
from pocketlm.cli import parse_args_with_presets, run
from pocketlm.errors import ConfigError
from pocketlm.hub import HubArguments, validate_repo_id


@dataclass
class ExportArguments:
    model: str = field(default=MINILM_SQUAD, metadata={"help": "QA checkpoint to export: repo id or path"})
    output_repo: str = field(default=MINILM_SQUAD_ONNX, metadata={"help": "repo id to publish the export as"})
    eval_samples: int | None = field(default=None, metadata={"help": "validation questions to score (default: all)"})
    threads: int | None = field(default=None, metadata={"help": "intra-op threads for scoring (default: all cores)"})

    def __post_init__(self):
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ConfigError(f"--eval_samples must be positive (got {self.eval_samples})")
        validate_repo_id(self.output_repo, "--output_repo")


PRESETS = {"demo": {"eval_samples": 300}, "full": {}}


def main(argv: list[str] | None = None) -> int:
    args, hub = parse_args_with_presets([ExportArguments, HubArguments], PRESETS, "full", argv, description=__doc__.splitlines()[0])
    repo_id = hub.target(args.output_repo)

    from pocketlm.data import load_squad
    from pocketlm.inference.qa_onnx_export import publish_question_answering_onnx
    from pocketlm.settings import runs_dir

    records = load_squad("validation").to_list()[: args.eval_samples]
    work_dir = runs_dir() / "qa-onnx-export" / repo_id.replace("/", "--")
    result = publish_question_answering_onnx(
        args.model, repo_id, records, work_dir, threads=args.threads, push_to_hub=hub.push_to_hub, token=hub.hub_token
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
