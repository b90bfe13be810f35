"""The corpus-preparation benchmark: a tiny real run (fresh prepare processes, memory sampled) and its summary."""

import json
import runpy

from pocketlm.settings import REPO_ROOT

BENCHMARK = runpy.run_path(str(REPO_ROOT / "benchmarks" / "corpus_prep.py"), run_name="corpus_prep")


def test_benchmark_records_memory_and_throughput_per_scale(tmp_path, tiny_tokenizer):
    """Two tiny scales, each prepared by `training_scripts/prepare_corpus.py` in a fresh process with two map
    workers (a process tree to sample); the record has one row per scale with measured, plausible numbers."""
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    folder = BENCHMARK["main"](["--scales", "0.02,0.05", "--num_procs", "2", "--tokenizer", str(tmp_path / "tokenizer"),
                                "--output_dir", str(tmp_path / "out")])
    record = json.loads((folder / "corpus_prep.json").read_text())
    assert {p.name for p in folder.iterdir()} == {"corpus_prep.json", "corpus_prep.md", "corpus_prep.png"}
    words_1x = record["default_corpus_words"]
    assert 600_000 < words_1x < 700_000  # WikiText-2's 120 articles + SQuAD train's paragraphs
    small, large = record["runs"]
    assert (small["scale"], large["scale"], small["mode"]) == (0.02, 0.05, "num_proc 2")
    for run, scale in ((small, 0.02), (large, 0.05)):
        assert scale * words_1x <= run["words"] < scale * words_1x + 20_000  # stops after the document that reaches it
        assert run["tokens"] > run["words"] and run["tokens_per_s"] == round(run["tokens"] / run["seconds"])
        assert 100 < run["peak_rss_mb"] < 4000 and 0 < run["tree_peak_anon_mb"] < run["tree_peak_pss_mb"]
    assert large["tokens"] > 2 * small["tokens"] and large["chunks"] > small["chunks"]
    figures = dict(record["figures"])
    assert figures["peak RSS 0.02× → 0.05× corpus (num_proc 2)"].endswith(" MB")
    assert "| 0.05 |" in (folder / "corpus_prep.md").read_text()


def test_summary_compares_processes_and_sizes():
    rows = [{"scale": s, "mode": f"num_proc {n}", "num_proc": n, "peak_rss_mb": 500.0 + s, "tree_peak_anon_mb": 300.0,
             "tokens_per_s": 1000 * n, "words": int(s * 10)} for s in (1, 30) for n in (1, 2)]
    figures, markdown = BENCHMARK["summarise"](rows, 10)
    assert figures["peak RSS 1× → 30× corpus (num_proc 1)"] == "501 → 530 MB"
    assert figures["tokens/s num_proc 2 ÷ 1 at 30×"] == "2.00×"
    assert markdown.count("\n| ") == 6  # header, rule, 4 rows
