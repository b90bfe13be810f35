"""Models: the readable Transformer LM (Llama-compatible); fine-tuning modules live beside it."""


def load_peft_model(model, path, **kwargs):
    """`peft.PeftModel.from_pretrained`, without the FutureWarning transformers 5 raises at every load because peft
    reads the deprecated `model.is_gradient_checkpointing`: nothing a user can act on, and it lands in the REPL."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, path, **kwargs)
