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


@pytest.mark.parametrize("chunk_size", [64, 147, 512])
def test_linear_cross_entropy_is_the_cross_entropy_of_the_full_logits(chunk_size):
    """Loss and gradients equal `F.cross_entropy(hidden @ weight.T)`'s, with ignored targets, whether the chunks
    divide the 147 positions (147), do not (64: 64 + 64 + 19) or exceed them (512)."""
    from pocketlm.models.linear_cross_entropy import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(147, 32, requires_grad=True)
    weight = torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 300, (147,))
    targets[:40] = -100
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(grads[0], expected_grads[0], atol=1e-7) and torch.allclose(grads[1], expected_grads[1], atol=1e-7)
    assert grads[0][:40].abs().max() == 0  # an ignored position gets no gradient


@pytest.mark.parametrize("tie", [True, False])
def test_the_fused_loss_gives_the_models_loss_and_gradients(tie):
    """`return_logits=False` (what the pretraining step asks for): same loss, same gradient on every parameter."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, d_ff=64, tie_embeddings=tie))
    ids = torch.randint(0, 300, (3, 50))
    labels = ids.clone()
    labels[0, :20] = -100  # e.g. a prompt that takes no loss
    reference = model(ids, labels=labels)
    reference["loss"].backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    out = model(ids, labels=labels, return_logits=False)
    assert "logits" not in out
    assert out["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-6)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6, rtol=1e-4), name


def test_the_fused_loss_keeps_no_logits_for_the_backward():
    """What autograd holds between forward and backward: with the full logits, (B, T, vocab)-sized tensors; fused,
    nothing larger than the output weight's gradient."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=2000, d_model=32, n_layers=1, n_heads=2, d_ff=64))
    ids = torch.randint(0, 2000, (4, 64))
    logits_elements = 4 * 63 * 2000

    def largest_saved(return_logits: bool) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            model(ids, labels=ids, return_logits=return_logits)["loss"].backward()
        return max(sizes)

    assert largest_saved(True) >= logits_elements
    assert largest_saved(False) <= 2000 * 32


def test_the_fused_loss_under_bf16_autocast_matches_the_autocast_logits_path():
    """bf16 matmuls, float32 softmax on both paths: the loss agrees to bf16's precision, the gradients point the same way."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=200, d_model=32, n_layers=1, n_heads=2, d_ff=64))
    ids = torch.randint(0, 200, (2, 40))
    grads, losses = [], []
    for return_logits in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=ids, return_logits=return_logits)["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        model.zero_grad()
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_without_gradients_the_loss_comes_with_the_logits():
    """Evaluation under no_grad needs no fused backward: `return_logits=False` then changes nothing."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, d_ff=64))
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        out = model(ids, labels=ids, return_logits=False)
        assert torch.equal(out["loss"], model(ids, labels=ids)["loss"]) and out["logits"].shape == (2, 12, 50)


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
