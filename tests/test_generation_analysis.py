"""Generation analysis: paragraphs of bounded length, their perplexity, the sweep and the report's reading."""

import math

import pytest
import torch


@pytest.fixture(scope="module")
def lm(tiny_lm_repo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketlm.hub import resolve

    path = resolve(tiny_lm_repo)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_paragraphs_have_bounded_length_and_their_own_perplexity(lm):
    from pocketlm.training.generation_analysis import continuation_nll, generate_paragraphs, overall

    model, tokenizer = lm
    paragraphs = generate_paragraphs(model, tokenizer, min_new_tokens=5, max_new_tokens=8, seed=1)
    assert len(paragraphs) == 5 and all(5 <= p.new_tokens <= 8 for p in paragraphs)
    first = paragraphs[0]
    prompt_ids = torch.tensor([tokenizer.eos_token_id, *tokenizer(first.prompt, add_special_tokens=False)["input_ids"]])
    new_ids = torch.tensor(tokenizer(first.text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.cat([prompt_ids, new_ids])[None]).logits[0]
    log_probs = logits.log_softmax(-1)
    manual = -sum(log_probs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(new_ids))
    assert continuation_nll(model, prompt_ids, new_ids) == pytest.approx(manual, rel=1e-4)
    total = overall(paragraphs)
    assert total["tokens"] == sum(p.new_tokens for p in paragraphs)
    assert total["ppl"] == pytest.approx(math.exp(sum(p.nll_sum for p in paragraphs) / total["tokens"]))
    again = generate_paragraphs(model, tokenizer, min_new_tokens=5, max_new_tokens=8, seed=1)
    assert [p.text for p in again] == [p.text for p in paragraphs]  # seeded: the report is reproducible


def test_the_discussion_reads_the_numbers():
    from pocketlm.training.generation_analysis import discussion

    rows = [
        {"temperature": 0.7, "top_k": 50, "ppl": 20.0, "distinct_2": 0.60},
        {"temperature": 1.3, "top_k": 50, "ppl": 90.0, "distinct_2": 0.95},
        {"temperature": 1.0, "top_k": 10, "ppl": 30.0, "distinct_2": 0.80},
        {"temperature": 1.0, "top_k": 50, "ppl": 45.0, "distinct_2": 0.90},
    ]
    text = "\n".join(discussion({"ppl": 45.0, "distinct_2": 0.9}, rows, {"ppl": 60.0, "distinct_2": 0.97}))
    assert "from temperature 0.7 to 1.3 changes the perplexity from 20.0 to 90.0 and distinct-2 from 0.600 to 0.950: the expected" in text
    assert "widening top-k from 10 to 50 changes the perplexity from 30.0 to 45.0" in text
    assert "*more* predictable than real text" in text and "closest to human perplexity is temperature 1, top-k 50" in text
    rows[1]["distinct_2"] = 0.5  # hotter but less diverse: the sentence must not claim the usual trade-off
    assert "does not show cleanly" in "\n".join(discussion({"ppl": 45.0, "distinct_2": 0.9}, rows, None))
