"""`generate_text` samples from the 50 most likely tokens at temperature 0.7: checked on the distribution the sampler
draws from."""

import torch

from pocketlm import TINY_LM


def test_generate_text_draws_each_token_from_the_top_50_of_the_model_logits(tiny_lm_repo, monkeypatch):
    from pocketlm.inference.pipelines import TEMPERATURE, TOP_K, generate_text, text_generator

    model = text_generator(TINY_LM).model
    raw_logits, sampled_from = [], []
    hook = model.register_forward_hook(lambda module, args, output: raw_logits.append(output.logits[:, -1].detach().float()))
    multinomial = torch.multinomial

    def recording_multinomial(probs, *args, **kwargs):  # what transformers' sampling step draws from
        sampled_from.append(probs.detach().clone())
        return multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    try:
        generate_text("The history of the city", max_new_tokens=6, seed=0)
    finally:
        hook.remove()

    assert (TOP_K, TEMPERATURE) == (50, 0.7) and len(sampled_from) == len(raw_logits) == 6
    assert model.config.vocab_size > 10 * TOP_K  # a cut to 50 is visible
    for probs, logits in zip(sampled_from, raw_logits):
        probs, logits = probs[0], logits[0]
        top = torch.topk(logits, TOP_K)
        assert int((probs > 0).sum()) == TOP_K
        assert set(torch.nonzero(probs).flatten().tolist()) == set(top.indices.tolist())
        # the kept tokens' probabilities: their logits over the temperature, renormalised
        assert torch.allclose(probs[top.indices], torch.softmax(top.values / TEMPERATURE, dim=-1), atol=1e-6)
