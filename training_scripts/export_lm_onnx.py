"""Export the tiny LM to ONNX with its KV cache (fp32 + two int8 graphs), check it against PyTorch, publish `pocketlm/tiny-lm-onnx`.

    python training_scripts/export_lm_onnx.py                       # pocketlm/tiny-lm → pocketlm/tiny-lm-onnx
    python training_scripts/export_lm_onnx.py --model_name_or_path gpt2 --repo_id me/gpt2-onnx   # Hub reachable

The model card records the logit and greedy-token agreement with PyTorch, the file sizes and the median
latency of a 50-token prompt + 32 new tokens for both graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pocketlm import TINY_LM, TINY_LM_ONNX
from pocketlm.cli import parse_args_with_presets, run
from pocketlm.hub import HubArguments, validate_repo_id


@dataclass
class ExportArguments:
    model_name_or_path: str = field(default=TINY_LM, metadata={"help": "Hub id or folder of a causal LM"})
    repo_id: str = field(default=TINY_LM_ONNX, metadata={"help": "where to publish the export"})
    quantize: bool = field(default=True, metadata={"help": "also write the int8 graphs (dynamic, and static: batch-stable)"})
    check_prompts: int = field(default=8, metadata={"help": "WikiText-2 prompts to compare with PyTorch on"})
    latency_runs: int = field(default=20, metadata={"help": "timed generations per graph for the card (0: skip)"})

    def __post_init__(self):
        validate_repo_id(self.repo_id, "--repo_id")


def main(argv: list[str] | None = None) -> int:
    args, hub = parse_args_with_presets([ExportArguments, HubArguments], args=argv, description=__doc__.splitlines()[0])
    repo_id = hub.target(args.repo_id)
    if args.check_prompts < 1 or args.latency_runs < 0:
        raise SystemExit("error: --check_prompts must be >= 1 and --latency_runs >= 0")
    from pocketlm.inference.lm_export import publish_lm_onnx

    folder = publish_lm_onnx(
        args.model_name_or_path, repo_id, quantize=args.quantize, check_prompts=args.check_prompts,
        latency_runs=args.latency_runs, push_to_hub=hub.push_to_hub, token=hub.hub_token,
    )
    print(f"published {repo_id} at {folder}", flush=True)
    print((folder / "metrics.json").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    run(main)
