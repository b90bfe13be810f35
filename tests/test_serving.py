"""The REST API over real HTTP: a real `python -m pocketlm.serving` process on a free loopback port."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pocketlm.hub import resolve
from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.inference.qa_engine import OnnxQuestionAnswerer
from pocketlm.serving.launch import running_server
from pocketlm.settings import REPO_ROOT

from loopback_server import server_sent_events

PROMPTS = ["The history of the city begins", "In 1905", "Rakie Ayola is a Welsh actress, best known for"]
CONTEXT = "Rakie Olufunmilayo Ayola (born May 1968) is a Welsh actress, best known for her role in Holby City."


@pytest.fixture(scope="module")
def server(tiny_lm_onnx_repo, tiny_qa_onnx_repo):
    with running_server() as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def local_lm(tiny_lm_onnx_repo):
    return OnnxCausalLM(resolve(tiny_lm_onnx_repo))


def test_health_names_the_onnx_graphs(server, client):
    assert server.ready_s < 30
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["models"]["lm"] == {"id": "pocketlm/tiny-lm-onnx", "file": "model.onnx", "precision": "fp32"}
    assert body["models"]["qa"]["precision"] == "int8" and body["models"]["qa"]["file"] == "model_quantized.onnx"
    assert body["in_flight"] == 0 and body["capacity"] > 8


def test_generate_is_the_onnx_greedy_continuation(client, local_lm):
    response = client.post("/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 12, "ignore_eos": True})
    assert response.status_code == 200, response.text
    body = response.json()
    ids = local_lm.encode(PROMPTS[0])
    expected = local_lm.generate_ids([ids], SamplingParams(max_new_tokens=12, stop_at_eos=False))[0]
    assert body["text"] == local_lm.decode(expected)
    assert (body["prompt_tokens"], body["generated_tokens"], body["finish_reason"]) == (len(ids), 12, "length")
    assert "pocketlm/tiny-lm-onnx" in body["model"] and body["latency_ms"] > 0


def test_sampling_with_a_seed_is_reproducible(client):
    request = {"prompt": PROMPTS[1], "max_new_tokens": 10, "do_sample": True, "top_k": 20, "temperature": 0.8, "seed": 11}
    first, second = (client.post("/generate", json=request).json()["text"] for _ in range(2))
    assert first == second


def _read_events(response: httpx.Response) -> list[tuple[str, dict, float]]:
    """(event name, data, arrival time) of each server-sent event."""
    return [(name, json.loads(data), arrived) for name, data, arrived in server_sent_events(response)]


def test_stream_sends_each_token_then_the_whole_text(client):
    request = {"prompt": PROMPTS[2], "max_new_tokens": 20, "ignore_eos": True}
    with client.stream("POST", "/generate/stream", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _read_events(response)
    tokens, (end_name, end, _) = events[:-1], events[-1]
    assert end_name == "end" and [e[1]["index"] for e in tokens] == list(range(20))
    assert end["generated_tokens"] == 20 and end["finish_reason"] == "length"
    assert end["text"].startswith("".join(e[1]["text"] for e in tokens))
    assert end["text"] == client.post("/generate", json=request).json()["text"]  # same greedy tokens as answered whole


def test_batch_equals_one_prompt_at_a_time(client):
    request = {"prompts": PROMPTS, "max_new_tokens": 10}
    body = client.post("/generate/batch", json=request).json()
    assert body["padded_shape"][0] == 3 and body["tokens_per_s"] > 0
    singles = [client.post("/generate", json={"prompt": p, "max_new_tokens": 10}).json() for p in PROMPTS]
    assert [g["text"] for g in body["generations"]] == [s["text"] for s in singles]
    assert body["padded_shape"][1] == max(s["prompt_tokens"] for s in singles)  # padded to this batch's longest only


def test_qa_returns_a_span_of_the_context(client, tiny_qa_onnx_repo):
    body = client.post("/qa", json={"question": "What is Rakie Ayola?", "context": CONTEXT}).json()
    assert CONTEXT[body["start"] : body["end"]] == body["answer"] and 0 <= body["score"] <= 1
    local = OnnxQuestionAnswerer.from_pretrained(resolve(tiny_qa_onnx_repo), quantized=True).answer("What is Rakie Ayola?", CONTEXT)
    assert (body["answer"], body["start"]) == (local.text, local.start)
    long_context = " ".join([CONTEXT] * 60)  # several windows (document stride)
    body = client.post("/qa", json={"question": "Who?", "context": long_context}).json()
    assert long_context[body["start"] : body["end"]] == body["answer"]


BAD_REQUESTS = [
    ("/generate", {"prompt": "", "max_new_tokens": 8}, "prompt"),
    ("/generate", {"prompt": "   \n", "max_new_tokens": 8}, "prompt"),
    ("/generate", {"prompt": "x" * 4001}, "prompt"),
    ("/generate", {"prompt": "word " * 800, "max_new_tokens": 8}, "prompt"),  # fits in characters, not in the 256-token window
    ("/generate", {"prompt": "Hi", "max_new_tokens": 0}, "max_new_tokens"),
    ("/generate", {"prompt": "Hi", "max_new_tokens": 257}, "max_new_tokens"),
    ("/generate", {"prompt": "Hi", "max_new_tokens": "many"}, "max_new_tokens"),
    ("/generate", {"max_new_tokens": 8}, "prompt"),
    ("/generate", {"prompt": 42}, "prompt"),
    ("/generate", {"prompt": "Hi", "temperature": 0}, "temperature"),
    ("/generate", {"prompt": "Hi", "max_tokens": 8}, "max_tokens"),
    ("/generate/stream", {"prompt": ""}, "prompt"),
    ("/generate/batch", {"prompts": []}, "prompts"),
    ("/generate/batch", {"prompts": ["Hi"] * 33}, "prompts"),
    ("/generate/batch", {"prompts": ["Hi", ""]}, "prompts"),
    ("/qa", {"question": "Who?", "context": ""}, "context"),
    ("/qa", {"question": "Who?", "context": "x" * 20001}, "context"),
    ("/qa", {"question": "", "context": "Some text."}, "question"),
    ("/qa", {"context": "Some text."}, "question"),
    ("/qa", {"question": ["Who?"], "context": "Some text."}, "question"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_REQUESTS, ids=[f"{p}-{f}-{i}" for i, (p, _, f) in enumerate(BAD_REQUESTS)])
def test_bad_input_is_a_422_naming_the_field(client, path, body, field):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert any(field in map(str, error["loc"]) for error in response.json()["detail"]), response.text


@pytest.mark.parametrize("raw", [b'{"prompt": "Hi",', b"not json", b"", b"\xff\xfe not utf-8"])
def test_invalid_json_is_a_422(client, raw):
    response = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_overload_is_refused_fast_and_the_server_recovers(tiny_lm_onnx_repo, tiny_qa_onnx_repo):
    """Capacity 2 (one running, one queued): of 24 simultaneous heavy requests most get an immediate 503."""
    heavy = {"prompts": ["The history of the city begins"] * 32, "max_new_tokens": 100, "ignore_eos": True}
    with running_server(["--max-active", "1", "--max-waiting", "1"]) as server, httpx.Client(base_url=server.base_url, timeout=120) as http:

        def call(_):
            started = time.perf_counter()
            response = http.post("/generate/batch", json=heavy)
            return response.status_code, time.perf_counter() - started, response.headers.get("retry-after")

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(call, range(24)))
        refused = [r for r in results if r[0] == 503]
        served = [r for r in results if r[0] == 200]
        assert len(refused) + len(served) == 24
        assert 1 <= len(served) and len(refused) >= 12
        assert all(r[2] is not None and int(r[2]) >= 1 for r in refused)  # Retry-After: whole seconds, at least 1
        assert max(r[1] for r in refused) < max(r[1] for r in served)  # refusals did not wait for the model
        health = http.get("/health").json()
        assert health["in_flight"] == 0
        assert http.post("/generate", json={"prompt": "Hi", "max_new_tokens": 2}).status_code == 200


def test_swagger_ui_works_offline(client):
    page = client.get("/docs").text
    assert "/static/swagger-ui/swagger-ui-bundle.js" in page and "/openapi.json" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = client.get(f"/static/swagger-ui/{asset}")
        assert response.status_code == 200 and len(response.content) > 100_000
    spec = client.get("/openapi.json").json()
    description = spec["info"]["description"]
    assert "KV cache" in description and "dynamic padding" in description and "ONNX Runtime" in description
    generate = spec["paths"]["/generate"]["post"]
    assert "503" in generate["responses"] and "422" in generate["responses"]
    schema = spec["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["max_new_tokens"]["maximum"] == 256 and schema["examples"]
    assert "text/event-stream" in spec["paths"]["/generate/stream"]["post"]["responses"]["200"]["content"]


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Property-based requests from the OpenAPI spec (valid and invalid): never a 5xx, bounded in count and time."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.base_url}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples", "20", "--seed", "1", "--workers", "1", "--request-timeout", "20",
        "--phases", "examples,coverage,fuzzing", "--generation-database", "none", "--no-color",
        "--report-dir", str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=tmp_path)  # its cache stays out of the repo
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_a_missing_export_is_a_one_line_error_naming_the_flag(tmp_path):
    env = {**os.environ, "POCKETLM_HUB_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pocketlm.serving", "--port", "8000"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --lm pocketlm/tiny-lm-onnx") and "Traceback" not in done.stderr


def test_serving_benchmark_writes_its_results(tiny_lm_onnx_repo, tiny_qa_onnx_repo, tmp_path):
    import runpy

    main = runpy.run_path(str(REPO_ROOT / "benchmarks" / "serving.py"))["main"]
    assert main(["--starts", "1", "--warmup", "1", "--requests", "3", "--duration", "1", "--overload_clients", "6",
                 "--overload_duration", "0.5", "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "serving.json").read_text())
    assert results["load"]["errors"] == 0 and results["load"]["requests"] > 0
    assert results["sequential_ms"]["generate"]["n"] == 3 and results["startup_s"]["runs"]
    assert set(results["targets"]) >= {"startup_median_below_1s", "generate_p95_below_200ms", "zero_errors_under_load"}
    assert (tmp_path / "serving.png").is_file() and "p95" in (tmp_path / "serving.md").read_text()
