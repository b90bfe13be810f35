"""Training scripts run themselves again on tcmalloc (pocketlm/allocator.py), or stay on the system malloc when asked."""

import os
import subprocess
import sys
import textwrap

import pytest

from pocketlm.allocator import ENV, chosen_library, find_tcmalloc, reruns_this_program, with_allocator
from pocketlm.errors import ConfigError
from pocketlm.settings import REPO_ROOT

# A script as the training scripts are written: its `main` handed to `pocketlm.cli.run(..., tcmalloc=True)`.
SCRIPT = textwrap.dedent("""
    import os, sys
    from pocketlm.allocator import loaded_allocator
    from pocketlm.cli import run

    def main():
        print(loaded_allocator(), os.getpid(), sys.argv[1:], sep="|")

    if __name__ == "__main__":
        run(main, tcmalloc=True)
""")


def run_script(tmp_path, env_changes: dict, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV)}
    env.update(env_changes)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120)


needs_tcmalloc = pytest.mark.skipif(
    find_tcmalloc() is None or not sys.platform.startswith("linux"),
    reason="tcmalloc is not installed (apt install libtcmalloc-minimal4; `make test` does it where apt can)",
)


@needs_tcmalloc
def test_a_training_script_runs_itself_again_on_tcmalloc_with_the_same_arguments(tmp_path):
    result = run_script(tmp_path, {}, "--flag", "a value with spaces", "ü")
    assert result.returncode == 0, result.stderr
    allocator, _, argv = result.stdout.strip().split("|")
    assert allocator == "tcmalloc"
    assert argv == str(["--flag", "a value with spaces", "ü"])
    assert result.stdout.count("|") == 2  # main ran once: the first process exec'd, it did not run main too


def test_pocketlm_allocator_system_keeps_the_c_librarys_malloc(tmp_path):
    result = run_script(tmp_path, {ENV: "system"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("|")[0] == "system"


def test_a_bad_pocketlm_allocator_is_a_one_line_error_naming_the_variable(tmp_path):
    result = run_script(tmp_path, {ENV: "/no/such/libtcmalloc.so"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {ENV}='/no/such/libtcmalloc.so'")
    assert "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match=ENV):
        chosen_library({ENV: "fast"})


def test_a_child_environment_names_one_allocator_and_keeps_other_preloads():
    base = {"LD_PRELOAD": "libfoo.so /opt/libjemalloc.so.2", "PATH": "/bin"}
    on_tcmalloc = with_allocator(base, "libtcmalloc_minimal.so.4")
    assert on_tcmalloc["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libfoo.so"
    assert on_tcmalloc["PATH"] == "/bin" and ENV not in on_tcmalloc
    on_system = with_allocator(on_tcmalloc, None)
    assert on_system["LD_PRELOAD"] == "libfoo.so" and on_system[ENV] == "system"
    assert "LD_PRELOAD" not in with_allocator({"LD_PRELOAD": "libtcmalloc.so.4"}, None)
    assert base["LD_PRELOAD"] == "libfoo.so /opt/libjemalloc.so.2"  # the caller's mapping is not touched


def test_only_a_script_started_as_a_program_runs_itself_again(tmp_path):
    """Rerunning the interpreter's command is right for `python script.py ...` and `python -m module ...`; a script
    run by `runpy` inside pytest (the training scripts' own tests do that) would rerun the whole test session."""
    script = str(tmp_path / "pretrain.py")
    python = sys.executable
    assert reruns_this_program([python, script, "--preset", "quick"], [script, "--preset", "quick"])
    assert reruns_this_program([python, "-u", "-X", "dev", script, "--x"], [script, "--x"])  # as torchrun starts it
    assert reruns_this_program([python, "-m", "benchmarks.corpus_prep", "--a"], ["/repo/benchmarks/corpus_prep.py", "--a"])
    assert reruns_this_program([python, "-m", "pocketlm.rag"], ["/repo/pocketlm/rag/__main__.py"])
    assert not reruns_this_program([python, "-m", "pytest", "-q", "tests/test_pretrain.py"], [script, "--preset", "x"])
    assert not reruns_this_program([python, "-m", "pytest", "--preset", "x"], [script, "--preset", "x"])
    assert not reruns_this_program([python, "-c", "import runpy"], ["-c"])
    assert not reruns_this_program([python, "-"], ["-"])
    assert not reruns_this_program([python, str(tmp_path / "other.py"), "--x"], [script, "--x"])
