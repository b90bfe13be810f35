"""Run each staged Space the way Hugging Face Spaces does, and time its cold start and first answer.

    python benchmarks/spaces_runtime.py                                   # all five (about 15 minutes here)
    python benchmarks/spaces_runtime.py --spaces question_answering      # one

For each Space: the models it loads are pushed from the local hub folder (`--hub_dir`, default
`POCKETLM_HUB_DIR` or `hub/`: what `make demo` built) to a test double of the Hugging Face Hub
(`tests/hub_double.py`, on loopback) under `--namespace`; the Space is staged for that namespace
(`python -m pocketlm.spaces.stage`), pushed to the double as a Space repo and downloaded back into an empty
folder; a fresh venv is built from that folder's `requirements.txt` alone; then `python app.py` runs in it with
`GRADIO_SERVER_NAME=0.0.0.0`, no checkout on its path, and an empty Hugging Face cache, so the models come from
the double by repo id. `gradio_client` then calls every endpoint the Space exposes (and, for the suite, `POST
/generate` and `POST /qa` over HTTP) and checks each answer.

Recorded per Space: the venv build time, the cold start (process start to the page being served, model
downloads included) and the first answer (process start to the first endpoint's answer). Results go to
`benchmarks/results/spaces_runtime/`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketlm.spaces.examples import QA_EXAMPLES  # noqa: E402  (these two import nothing of huggingface_hub: see main)
from pocketlm.spaces.stage import STAGEABLE  # noqa: E402

PROMPT = "The history of the city begins"
QA_EXAMPLE = QA_EXAMPLES[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pocketlm.settings import hub_dir, runs_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=list(STAGEABLE), choices=STAGEABLE)
    parser.add_argument("--hub_dir", type=Path, default=hub_dir(), help="hub folder with the pocketlm/... artifacts")
    parser.add_argument("--namespace", default="spaces-check", help="owner of the artifacts on the double")
    parser.add_argument("--hub_double", type=Path, default=REPO_ROOT / "tests" / "hub_double.py")
    parser.add_argument("--work_dir", type=Path, default=runs_dir() / "spaces-runtime")
    parser.add_argument("--venv_cache", type=Path, default=None,
                        help="reuse a venv built from an identical requirements.txt (default: a fresh one)")
    parser.add_argument("--venvs_only", action="store_true",
                        help="only build the venvs into --venv_cache (staged here, no Hub), for a later run")
    parser.add_argument("--server_name", default="0.0.0.0", help="GRADIO_SERVER_NAME of the Spaces (as on Spaces)")
    parser.add_argument("--python", default=sys.executable, help="the Python 3.11 that builds the venvs")
    parser.add_argument("--ready_timeout_s", type=float, default=900.0)
    parser.add_argument("--output_dir", type=Path, default=None, help="(default benchmarks/results/spaces_runtime)")
    return parser.parse_args(argv)


def load_double(path: Path):
    if not path.is_file():
        raise SystemExit(f"error: --hub_double {path}: no such file (the Hub test double, tests/hub_double.py)")
    spec = importlib.util.spec_from_file_location("hub_double", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def push_artifacts(space: str, args, pushed: set[str]) -> list[str]:
    """Push the models `space` loads (under the namespace) from the local hub folder to the double."""
    from pocketlm import BASE_ENCODER
    from pocketlm.artifacts import NAMESPACE_VAR
    from pocketlm.hub import PACKAGED_MODELS, push
    from pocketlm.spaces.cli import space_models

    models = space_models(space, {NAMESPACE_VAR: args.namespace})
    for repo_id in models:
        if repo_id in pushed:
            continue
        if repo_id == BASE_ENCODER:  # on the Hub it is sentence-transformers' own repo; here, the packaged copy
            source = Path(PACKAGED_MODELS[BASE_ENCODER]())
        else:
            source = args.hub_dir / "pocketlm" / repo_id.split("/", 1)[1]
        if not source.is_dir():
            if repo_id.endswith("/tiny-lm-rag-lora"):
                continue  # optional: without it the RAG agent answers with the base LM
            raise SystemExit(f"error: {source} does not exist: build the artifacts first (make demo)")
        push(source, repo_id)
        pushed.add(repo_id)
    return models


def staged_from_the_hub(space: str, args, folder: Path) -> Path:
    """Stage the Space, push it to the double as a Space repo, download it into an empty folder."""
    from huggingface_hub import snapshot_download

    from pocketlm.hub import push_space
    from pocketlm.spaces.stage import stage

    repo_id = f"{args.namespace}/pocketlm-{space.replace('_', '-')}"
    push_space(stage(space, folder / "staged", args.namespace), repo_id)
    return Path(snapshot_download(repo_id, repo_type="space", local_dir=folder / "space"))


def fresh_venv(requirements: Path, args, folder: Path) -> tuple[Path, float, bool]:
    """A venv with `requirements` installed and nothing else: (its python, seconds it took, reused?)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = (args.venv_cache / digest) if args.venv_cache else folder / "venv"
    python = venv / "bin" / "python"
    if args.venv_cache and (venv / ".complete").is_file():  # holds the seconds its build took
        return python, float((venv / ".complete").read_text()), True
    started = time.perf_counter()
    subprocess.run([args.python, "-m", "venv", "--clear", str(venv)], check=True)
    # PIP_RETRIES=0: where an index of requirements.txt is unreachable (torch's CPU index, offline), skip it at once
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-r", str(requirements)],
                            capture_output=True, text=True, env={**os.environ, "PIP_RETRIES": "0"})
    if result.returncode != 0:
        raise SystemExit(f"error: pip install -r {requirements} failed:\n{result.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    (venv / ".complete").write_text(f"{seconds:.1f}")
    return python, seconds, False


def space_env(endpoint: str, folder: Path, args) -> dict[str, str]:
    """What Spaces gives the process: no checkout, an empty HF cache, the Hub (here: the double)."""
    env = {key: os.environ[key] for key in ("PATH", "LANG", "TMPDIR") if key in os.environ}
    return {**env, "HOME": str(folder / "home"), "HF_HOME": str(folder / "hf-home"), "HF_ENDPOINT": endpoint,
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "GRADIO_SERVER_NAME": args.server_name, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def run_space(space: str, python: Path, app: Path, env: dict, args) -> dict:
    """Start `app.py`, call every endpoint, check the answers; the timings."""
    from pocketlm.serving.launch import free_port, running_process

    port = free_port()
    ready = "/health" if space == "suite" else "/config"
    started = time.perf_counter()
    with running_process([str(python), "app.py"], port, ready_path=ready, cwd=app, log_path=app.parent / "space.log",
                         base_env={**env, "GRADIO_SERVER_PORT": str(port)}, ready_timeout_s=args.ready_timeout_s,
                         poll_s=0.2) as server:
        cold_start = server.ready_s
        answers = call_every_endpoint(space, server.base_url)
        first_answer = answers.pop("first_answer_at") - started
    return {"cold_start_s": round(cold_start, 2), "first_answer_s": round(first_answer, 2), "endpoints": sorted(answers)}


def call_every_endpoint(space: str, base_url: str) -> dict:
    """Each named endpoint of the Space through gradio_client, with a check of its answer; for the suite also
    the REST routes over HTTP. Fails on an endpoint that has no call here (every one must be exercised)."""
    from gradio_client import Client

    client = Client(base_url + "/", verbose=False)
    calls = {"/generate_text": _generate, "/answer_question": _answer, "/compare_runtimes": _compare, "/chat": _chat,
             "/reset_chat": _reset, "/add_documents": _add_documents}
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    if named - set(calls):
        raise SystemExit(f"error: {space}: no call for the endpoints {sorted(named - set(calls))}")
    done = {"first_answer_at": None}
    for name in sorted(named, key=list(calls).index):
        done[name] = calls[name](client)
        done["first_answer_at"] = done["first_answer_at"] or time.perf_counter()
    if space == "suite":
        done.update(_rest_routes(base_url))
    return done


def _generate(client) -> bool:
    text, _ = client.predict(PROMPT, 20, 0.7, 24, 7, api_name="/generate_text")
    return _check(bool(text.strip()), "generated text")


def _answer(client) -> bool:
    question, context = QA_EXAMPLE
    answer = client.predict(question, context, api_name="/answer_question")[0]
    return _check(bool(answer) and answer in context, "an answer from the context")


def _compare(client) -> bool:
    table, _ = client.predict(*QA_EXAMPLE, 3, api_name="/compare_runtimes")
    return _check(len(table["data"]) == 3, "three runtimes")


def _chat(client) -> bool:
    _, history, _, _ = client.predict("Which NFL team won Super Bowl 50?", [], api_name="/chat")
    reply = str(history[-1]["content"])
    _check("source: **[" in reply or "Not found in the fragments" in reply, "an answer with its source, or an abstention")
    _, history, _, _ = client.predict("!search Olmec colossal heads", history, api_name="/chat")
    return _check("[web-1] Olmec colossal heads" in str(history[-1]["content"]), "the staged mock web_search pages")


def _add_documents(client) -> bool:
    """Upload one small Markdown file, then ask about it: the session's answer comes from the upload."""
    import tempfile

    from gradio_client import handle_file

    with tempfile.TemporaryDirectory() as folder:
        note = Path(folder) / "keeper.md"
        note.write_text("# Lighthouse\n\nThe Kestrel Point lighthouse was kept by Elsa Brandt from 1887.\n")
        _, status = client.predict([handle_file(str(note))], api_name="/add_documents")
    _check("✅ **keeper.md**" in str(status), "the upload indexed")
    _, _, fragments, _ = client.predict("Who kept the Kestrel Point lighthouse?", [], api_name="/chat")
    return _check("[keeper.md#1]" in str(fragments), "the uploaded document retrieved")


def _reset(client) -> bool:
    return _check("empty" in str(client.predict(api_name="/reset_chat")[-1]), "an empty memory")


def _rest_routes(base_url: str) -> dict:
    import httpx

    question, context = QA_EXAMPLE
    with httpx.Client(base_url=base_url, timeout=120) as http:
        generated = http.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8})
        answered = http.post("/qa", json={"question": question, "context": context})
    return {"POST /generate": _check(generated.status_code == 200 and "text" in generated.json(), "/generate 200"),
            "POST /qa": _check(answered.status_code == 200 and answered.json()["answer"] in context, "/qa 200")}


def _check(ok: bool, what: str) -> bool:
    if not ok:
        raise SystemExit(f"error: expected {what}")
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import shutil

    from pocketlm.serving.launch import free_port

    double = load_double(args.hub_double)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # huggingface_hub reads these when imported, so before anything imports it (gradio does)
    os.environ.update({"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_TOKEN": "hf_spaces_runtime_check",
                       "HF_HOME": str(args.work_dir / "hf-home-pusher")})
    shutil.rmtree(args.work_dir, ignore_errors=True)
    if args.venvs_only:
        return build_venvs(args)
    results, pushed, failed = {}, set(), []
    with double.hub_double(args.work_dir / "hub-double", port=port):
        for space in args.spaces:
            try:
                results[space] = check_space(space, args, endpoint, pushed)
            except (Exception, SystemExit) as err:  # the other Spaces still run; the exit status says it failed
                print(f"{space}: FAILED: {err}", flush=True)
                failed.append(space)
    if results:
        write(results, args)
    if failed:
        print(f"failed: {', '.join(failed)} (each Space's log: {args.work_dir}/<space>/space.log)", file=sys.stderr)
    return 1 if failed else 0


def check_space(space: str, args, endpoint: str, pushed: set[str]) -> dict:
    folder = args.work_dir / space
    models = push_artifacts(space, args, pushed)
    app = staged_from_the_hub(space, args, folder)
    python, venv_s, reused = fresh_venv(app / "requirements.txt", args, folder)
    print(f"{space}: venv {'reused' if reused else f'built in {venv_s:.0f} s'}; starting app.py", flush=True)
    timings = run_space(space, python, app, space_env(endpoint, folder, args), args)
    print(f"{space}: cold start {timings['cold_start_s']} s, first answer {timings['first_answer_s']} s, "
          f"answered {', '.join(timings['endpoints'])}", flush=True)
    return {"venv_build_s": round(venv_s, 1), "venv_reused": reused, "models": models, **timings}


def build_venvs(args) -> int:
    from pocketlm.spaces.stage import stage

    if args.venv_cache is None:
        raise SystemExit("error: --venvs_only needs --venv_cache")
    for space in args.spaces:
        staged = stage(space, args.work_dir / space / "staged", args.namespace)
        _, seconds, reused = fresh_venv(staged / "requirements.txt", args, args.work_dir / space)
        print(f"{space}: venv {'already built' if reused else 'built'} in {seconds:.0f} s", flush=True)
    return 0


def _venv_cell(result: dict) -> str:
    return f"{result['venv_build_s']:.0f} s" + (" (cached)" if result["venv_reused"] else "")


def write(results: dict, args) -> None:
    from pocketlm.benchmarking import write_results

    rows = ["| Space | venv build | cold start | first answer | endpoints answered |", "|---|---:|---:|---:|---|"]
    rows += [f"| {space} | {_venv_cell(r)} | {r['cold_start_s']:.1f} s | {r['first_answer_s']:.1f} s | "
             f"{', '.join('`' + e + '`' for e in r['endpoints'])} |" for space, r in results.items()]
    markdown = ("Each staged Space pushed to and downloaded from the Hub test double, run in a fresh venv built from "
                "its own requirements.txt, models downloaded by repo id into an empty cache. Cold start: process start "
                "to the page served (model downloads included); first answer: process start to the first endpoint's "
                "answer.\n\n" + "\n".join(rows))
    figures = {f"{space} cold start / first answer": f"{r['cold_start_s']:.1f} s / {r['first_answer_s']:.1f} s"
               for space, r in results.items()}
    folder = write_results("spaces_runtime", {"spaces": results}, markdown, figures=figures, output_dir=args.output_dir)
    print(f"results in {folder}")


if __name__ == "__main__":
    sys.exit(main())
