"""A sequence classifier tuned with peft's LoRA, bottleneck adapters, or both (or fully): build, save, reload.

One mechanism trains and saves everything that is not frozen: a peft `LoraConfig` whose `target_modules`
are the attention projections (none for adapters alone) and whose `modules_to_save` are the classification
head and the bottleneck adapters. So the optimiser sees exactly LoRA + adapters + head, and one
`adapter_model.safetensors` holds them all. A published folder also carries `pocketlm_classifier.json`
(how to rebuild the model around the weights: base model id, method, adapter size, label names) and the
tokenizer; `load_classifier` reads it back, in any process, to identical logits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from pocketlm import BASE_ENCODER
from pocketlm.errors import ConfigError
from pocketlm.models.adapters import ADAPTER_MODULE_NAME, add_bottleneck_adapters
from pocketlm.models.mixout import apply_mixout, check_mixout_probability

METHODS = ("lora+adapters", "lora", "adapters", "full")
SPEC_FILE = "pocketlm_classifier.json"


@dataclass(frozen=True)
class Architecture:
    """Where the tunable parts sit in one model family (module-name regexes and head module names)."""

    attention_projections: str
    """LoRA targets: the attention's query, key, value and output projections."""
    ffn_output: str
    """The FFN's second projection in every layer, after which the bottleneck adapter runs."""
    head: tuple[str, ...]
    """The classification head's modules (trained, saved, and mixed out); for BERT the pretrained pooler too."""


_BERT_LIKE = dict(
    attention_projections=r".*\.attention\.(self\.(query|key|value)|output\.dense)",
    ffn_output=r".*\.layer\.\d+\.output\.dense",
)
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(**_BERT_LIKE, head=("pooler", "classifier")),
    "roberta": Architecture(**_BERT_LIKE, head=("classifier",)),
    "xlm-roberta": Architecture(**_BERT_LIKE, head=("classifier",)),
    "electra": Architecture(**_BERT_LIKE, head=("classifier",)),
    "distilbert": Architecture(r".*\.attention\.(q_lin|k_lin|v_lin|out_lin)", r".*\.layer\.\d+\.ffn\.lin2",
                               head=("pre_classifier", "classifier")),
    "mpnet": Architecture(r".*\.attention\.attn\.(q|k|v|o)", r".*\.layer\.\d+\.output\.dense", head=("classifier",)),
}


@dataclass
class ClassifierSpec:
    """How to build the classifier: base model, tuning method and its sizes (also the scripts' model arguments)."""

    model_name_or_path: str = field(
        default=BASE_ENCODER, metadata={"help": "base encoder: a Hub id, a local folder or a pocketlm hub id"})
    method: str = field(
        default="lora+adapters", metadata={"help": "what trains besides the head", "choices": list(METHODS)})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA branch's input"})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "regex of module names for LoRA (default: the attention projections of known model types)"})
    adapter_size: int = field(default=64, metadata={"help": "bottleneck size of the adapter in every FFN block"})
    adapter_target_modules: str | None = field(
        default=None, metadata={"help": "regex of the FFN output projections that get an adapter (default: per model type)"})
    head_modules: str | None = field(
        default=None, metadata={"help": "comma-separated names of the classification head's modules (default: per model type)"})
    mixout_p: float = field(default=0.1, metadata={"help": "mixout probability on the head's linear layers, in [0, 1); 0 = off"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_mixout_probability(self.mixout_p)
        if self.lora_r < 1:
            raise ConfigError(f"--lora_r must be at least 1, got {self.lora_r}")

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora+adapters", "lora")

    @property
    def uses_adapters(self) -> bool:
        return self.method in ("lora+adapters", "adapters")

    def architecture(self, model_type: str) -> Architecture:
        """The module layout for `model_type`, with the explicit `--*_modules` flags taking precedence."""
        known = ARCHITECTURES.get(model_type)
        overrides = {
            "attention_projections": self.lora_target_modules,
            "ffn_output": self.adapter_target_modules,
            "head": tuple(n.strip() for n in self.head_modules.split(",") if n.strip()) if self.head_modules else None,
        }
        missing = [flag for flag, value in zip(("--lora_target_modules", "--adapter_target_modules", "--head_modules"),
                                               overrides.values()) if value is None]
        if known is None and missing:
            raise ConfigError(f"no known module layout for model type {model_type!r} (known: {', '.join(sorted(ARCHITECTURES))}); "
                              f"set {', '.join(missing)}")
        base = asdict(known) if known else {}
        return Architecture(**{key: value if value is not None else base[key] for key, value in overrides.items()})


def build_classifier(spec: ClassifierSpec, label_names: list[str]) -> nn.Module:
    """The base encoder with a fresh `label_names` head, prepared for `spec.method` (call `set_seed` first).

    Mixout replaces the head's linear layers before peft copies the head into `modules_to_save`, so the
    trained copy mixes towards the pretrained pooler / initial classifier weights.
    """
    from transformers import AutoModelForSequenceClassification

    from pocketlm.hub import resolve

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve(spec.model_name_or_path),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    return prepare_classifier(model, spec)


def prepare_classifier(model: nn.Module, spec: ClassifierSpec) -> nn.Module:
    """Mixout on the head, then (unless `full`) adapters and peft's LoRA around a sequence-classification model."""
    arch = spec.architecture(model.config.model_type)
    apply_mixout(model, spec.mixout_p, list(arch.head))
    if spec.method == "full":
        return model
    return _wrap_with_peft(model, spec, arch)


def _wrap_with_peft(model: nn.Module, spec: ClassifierSpec, arch: Architecture, inference: bool = False):
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.utils.constants import DUMMY_TARGET_MODULES

    if spec.uses_adapters:
        add_bottleneck_adapters(model, spec.adapter_size, arch.ffn_output)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        # Adapters alone: peft's "dummy" target (what its X-LoRA uses) wraps no layer, so only modules_to_save train.
        target_modules=arch.attention_projections if spec.uses_lora else DUMMY_TARGET_MODULES,
        modules_to_save=[*arch.head, *([ADAPTER_MODULE_NAME] if spec.uses_adapters else [])],
        inference_mode=inference,
    )
    peft_model = get_peft_model(model, config)
    # Record the id the user gave, not the local path it resolved to, so the artifact loads on any machine.
    peft_model.peft_config["default"].base_model_name_or_path = spec.model_name_or_path
    return peft_model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of the model as deployed: peft's frozen originals of copied modules are not counted."""
    trainable = total = 0
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def save_classifier(model: nn.Module, tokenizer, folder: str | Path, spec: ClassifierSpec, extra: dict | None = None) -> None:
    """Write the trained weights (peft adapter files, or a full model), the tokenizer and `pocketlm_classifier.json`."""
    folder = Path(folder)
    if spec.method == "full":
        model.save_pretrained(folder, safe_serialization=True)
    else:  # the embeddings are frozen: skip peft's check of the base's vocabulary (it would look the base id up on the Hub)
        model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
    tokenizer.save_pretrained(folder)
    config = model.config if spec.method == "full" else model.get_base_model().config
    description = {
        "spec": asdict(spec),
        "label_names": [config.id2label[i] for i in range(config.num_labels)],
        "model_type": config.model_type,
        **(extra or {}),
    }
    (folder / SPEC_FILE).write_text(json.dumps(description, indent=2) + "\n")


def read_classifier_spec(folder: str | Path) -> tuple[ClassifierSpec, list[str], dict]:
    """The spec, the label names and the whole description stored beside a saved classifier."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a pocketlm classifier (no {SPEC_FILE})")
    description = json.loads(path.read_text())
    return ClassifierSpec(**description["spec"]), description["label_names"], description


def load_classifier(id_or_path: str, merge_lora: bool = False):
    """Load a saved classifier for inference: `(model, tokenizer, label_names)`, in eval mode.

    The base encoder is resolved offline through `pocketlm.hub.resolve`; the adapters are re-attached and
    peft loads LoRA, adapters and head from `adapter_model.safetensors`. `merge_lora` folds LoRA into the
    base weights (the adapters stay: they sit behind a non-linearity and cannot be merged).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pocketlm.hub import resolve

    folder = resolve(id_or_path)
    spec, label_names, _ = read_classifier_spec(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    spec.mixout_p = 0.0  # inference: plain linear layers, same keys
    if spec.method == "full":
        return AutoModelForSequenceClassification.from_pretrained(folder).eval(), tokenizer, label_names
    from pocketlm.models import load_peft_model

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the base's fresh head is replaced from the artifact just below
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve(spec.model_name_or_path), num_labels=len(label_names),
            id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    arch = spec.architecture(model.config.model_type)
    if spec.uses_adapters:
        add_bottleneck_adapters(model, spec.adapter_size, arch.ffn_output)
    model = load_peft_model(model, folder, is_trainable=False)
    if merge_lora:
        model = model.merge_and_unload()
    return model.eval(), tokenizer, label_names

