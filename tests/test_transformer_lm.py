"""The hand-written LM is the transformers Llama, parameter for parameter."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, pipeline

from pocketlm.hub import resolve
from pocketlm.models.transformer_lm import TransformerLM, TransformerLMConfig


def test_default_is_four_layers_of_width_256():
    model = TransformerLM(TransformerLMConfig())
    assert model.config.n_layers == 4 and len(model.model.layers) == 4
    assert model.config.d_model == 256 and model.model.embed_tokens.embedding_dim == 256
    assert 5_000_000 < model.num_parameters() < 5_500_000


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_llama_on_the_same_weights(tie):
    torch.manual_seed(0)
    cfg = TransformerLMConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, tie_embeddings=tie)
    ours = TransformerLM(cfg).eval()
    llama = LlamaForCausalLM(LlamaConfig(**cfg.to_llama_dict())).eval()
    missing, unexpected = llama.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ids = torch.randint(0, 300, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # one left-padded row
    with torch.no_grad():
        assert (ours(ids)["logits"] - llama(ids).logits).abs().max() < 1e-4
        diff = ours(ids, attention_mask=mask)["logits"] - llama(ids, attention_mask=mask).logits
        assert diff[:, 7:].abs().max() < 1e-4 and diff[1:].abs().max() < 1e-4


def test_later_tokens_never_change_earlier_logits():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=2, d_ff=64)).eval()
    ids = torch.randint(0, 100, (2, 30))
    changed = ids.clone()
    changed[:, 20:] = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        before, after = model(ids)["logits"], model(changed)["logits"]
    assert torch.equal(before[:, :20], after[:, :20])
    assert not torch.allclose(before[:, 20:], after[:, 20:])


def test_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, d_ff=64))
    ids = torch.randint(0, 50, (2, 12))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out["logits"][:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_saved_checkpoint_loads_with_auto_classes_and_pipeline(tmp_path, tiny_lm_repo, tiny_tokenizer):
    folder = resolve(tiny_lm_repo)
    ours = TransformerLM.from_pretrained(folder).eval()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tiny_tokenizer("The history of the city", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (ours(ids)["logits"] - hf(ids).logits).abs().max() < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer("The history of the city", return_tensors="pt")
    assert "token_type_ids" not in encoded
    with torch.no_grad():  # the most common idiom: every tokenizer output is a keyword the model takes
        continued = hf.generate(**encoded, max_new_tokens=4, do_sample=False)
    assert continued.shape[1] == encoded["input_ids"].shape[1] + 4
    generator = pipeline("text-generation", model=folder, device="cpu")
    text = generator("The history", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The history") and len(text) > len("The history")


def test_sequence_longer_than_the_context_is_refused():
    model = TransformerLM(TransformerLMConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
