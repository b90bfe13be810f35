"""A test double of the Hugging Face Hub's HTTP API, served on loopback: what `huggingface_hub` 1.x really calls.

Point a client at it with `HF_ENDPOINT=<url>` (read by `huggingface_hub` at import: set it before the client
process starts) and `HF_HUB_DISABLE_XET=1`: with `hf_xet` installed the client uploads LFS files through Xet
storage, a separate chunked protocol this double does not speak; with Xet disabled it takes the Git LFS batch
path (`.git/info/lfs/objects/batch`, a basic PUT, then verify), which this double does. Downloads never need
Xet: a file is fetched over plain HTTP unless the server sends `X-Xet-*` headers, which this double never does.

What it serves, with the request and response shapes of `huggingface_hub` (`hf_api.py`, `_commit_api.py`,
`lfs.py`, `file_download.py`, `_snapshot_download.py`):

- `GET /api/whoami-v2` — any bearer token starting with `hf_` is a valid write token of user `pocketlm-tester`;
- `POST /api/repos/create` — models and Spaces (`sdk` required for a Space, as on the Hub); 409 if it exists;
- `POST /api/validate-yaml` — the README front matter must be a YAML mapping;
- `POST /api/{type}s/{repo}/preupload/{rev}` — `lfs` for binary samples, files over 10 MB and LFS-tracked
  extensions (`.safetensors`, `.onnx`, `.faiss`, `.png`...), else `regular`; with the remote oid of each path;
- `POST /{repo}.git/info/lfs/objects/batch`, `PUT` upload, `POST` verify — sha256 and size are checked;
- `POST /api/{type}s/{repo}/commit/{rev}` — the NDJSON commit (`header`, `file`, `lfsFile`, `deletedFile`...);
- `GET /api/{type}s/{repo}[/revision/{rev}]` — repo info with `sha`, `siblings`, `cardData`, a Space's `sdk`;
- `GET /api/{type}s/{repo}/tree/{rev}[/{path}]` and `POST .../paths-info/{rev}`;
- `HEAD|GET /{repo}/resolve/{rev}/{path}` — a regular file answers 200 with `ETag` (git blob sha1),
  `X-Repo-Commit` and `Content-Length`; an LFS file answers 302 to a "CDN" host (`localhost` instead of
  `127.0.0.1`, so the client stops there as it does before Hugging Face's CDN) with `X-Linked-Etag` (sha256),
  `X-Linked-Size` and `X-Repo-Commit`. Missing repos, revisions and files answer with the Hub's `X-Error-Code`.

Writes need a token (401 otherwise); reads are public. Every uploaded file is stored by sha256 under
`<storage>/objects/`, and the repos' commits in `<storage>/repos.json`, so a test can search the uploads and a
double started again on the same storage serves the same repos.

    with hub_double(tmp_path / "hub-storage") as endpoint:   # in a test: a thread of the test process
        env = client_env(endpoint, hf_home=tmp_path / "hf")  # HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME, online

    python tests/hub_double.py --storage DIR --port 8765      # in another process; prints its URL when ready
"""


import argparse
import base64
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

USER = "pocketlm-tester"
LFS_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".bin", ".pt", ".pth", ".faiss", ".npy", ".npz", ".png",
                ".jpg", ".gz", ".zip", ".parquet", ".arrow", ".msgpack", ".h5", ".ckpt", ".model", ".pkl")
"""The extensions the Hub's default `.gitattributes` sends to LFS (a subset: what pocketlm writes and more)."""
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SPACE_SDKS = {"gradio", "docker", "static", "streamlit"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubStorage:
    """Repos, their commits and the uploaded bytes; persisted under one folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.state_file = self.root / "repos.json"
        self.lock = threading.Lock()
        self.repos: dict[str, dict] = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    @staticmethod
    def key(repo_type: str, repo_id: str) -> str:
        return f"{repo_type}/{repo_id}"

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.repos, indent=1))
        tmp.replace(self.state_file)

    def put_object(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.objects / sha256
        if not path.exists():
            path.write_bytes(data)
        return sha256

    def repo(self, repo_type: str, repo_id: str) -> dict | None:
        return self.repos.get(self.key(repo_type, repo_id))

    @staticmethod
    def commit_files(repo: dict, revision: str) -> tuple[str, dict] | None:
        """(commit oid, {path: file entry}) of `revision` (a branch name or a commit oid), or None."""
        commits = repo["commits"]
        if revision in repo["refs"]:
            oid = repo["refs"][revision]
        elif any(c["oid"] == revision for c in commits):
            oid = revision
        else:
            return None
        return oid, next(c["files"] for c in commits if c["oid"] == oid)


def upload_mode(path: str, size: int, sample: bytes) -> str:
    """The Hub's rule: LFS for tracked extensions, large files and binary content; plain git otherwise."""
    if path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample:
        return "lfs"
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return "lfs"
    return "regular"


def create_app(storage_dir: Path, public_url: str | None = None):
    """The FastAPI app. `public_url` is the base URL clients use (needed for LFS hrefs and redirects)."""
    import yaml
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response

    store = HubStorage(storage_dir)
    app = FastAPI(title="Hugging Face Hub test double")
    app.state.storage = store
    app.state.requests = []  # (method, path) of every request: tests can assert what a client called

    def base(request: Request) -> str:
        return (public_url or str(request.base_url)).rstrip("/")

    def cdn(request: Request) -> str:
        """The same server under another host name: the client must not follow a redirect there (as with a CDN)."""
        return base(request).replace("://127.0.0.1", "://localhost", 1)

    def error(status: int, message: str, code: str | None = None) -> JSONResponse:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        return token if token and token.startswith("hf_") else None

    def needs_write(request: Request) -> JSONResponse | None:
        if token_of(request) is None:
            return error(401, "Invalid credentials in Authorization header")
        return None

    def find(repo_type: str, repo_id: str, revision: str | None = None):
        repo = store.repo(repo_type, repo_id)
        if repo is None:
            return None, None, error(404, "Repository not found", "RepoNotFound")
        if revision is None:
            return repo, None, None
        found = store.commit_files(repo, revision)
        if found is None:
            return repo, None, error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, found, None

    @app.middleware("http")
    async def record(request: Request, call_next):
        app.state.requests.append((request.method, request.url.path))
        return await call_next(request)

    @app.get("/api/whoami-v2")
    def whoami(request: Request):
        if token_of(request) is None:
            return error(401, "Invalid credentials in Authorization header")
        return {"type": "user", "name": USER, "fullname": "pocketlm tester", "orgs": [], "canPay": False,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        if (denied := needs_write(request)) is not None:
            return denied
        body = await request.json()
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            return error(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        url = f"{base(request)}/{URL_PREFIX[repo_type]}{repo_id}"
        if repo_type == "space" and body.get("sdk") not in SPACE_SDKS:
            return error(400, f"Invalid sdk for a Space: {body.get('sdk')!r}")
        with store.lock:
            if store.repo(repo_type, repo_id) is not None:
                return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
            store.repos[store.key(repo_type, repo_id)] = {
                "id": repo_id, "type": repo_type, "sdk": body.get("sdk"), "private": body.get("visibility") == "private",
                "createdAt": _now(), "refs": {}, "commits": [],
            }
            store.save()
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        content = (await request.json()).get("content", "")
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as err:
                return JSONResponse({"errors": [{"message": f"invalid YAML: {err}"}]}, status_code=400)
            if meta is not None and not isinstance(meta, dict):
                return JSONResponse({"errors": [{"message": "metadata must be a YAML mapping"}]}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/{type_plural}/{owner}/{name}/preupload/{revision}")
    async def preupload(type_plural: str, owner: str, name: str, revision: str, request: Request):
        if (denied := needs_write(request)) is not None:
            return denied
        repo, found, missing = find(REPO_TYPES.get(type_plural, "?"), f"{owner}/{name}", None)
        if missing:
            return missing
        current = (store.commit_files(repo, revision) or (None, {}))[1]
        files = []
        for entry in (await request.json())["files"]:
            mode = upload_mode(entry["path"], entry["size"], base64.b64decode(entry["sample"]))
            remote = current.get(entry["path"])
            oid = (remote["lfs"]["oid"] if remote["lfs"] else remote["oid"]) if remote else None
            files.append({"path": entry["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": files, "commitOid": repo["refs"].get(revision)}

    @app.post("/{prefix:path}.git/info/lfs/objects/batch")
    async def lfs_batch(prefix: str, request: Request):
        if (denied := needs_write(request)) is not None:
            return denied
        repo_type, repo_id = _split_prefix(prefix)
        if store.repo(repo_type, repo_id) is None:
            return error(404, "Repository not found", "RepoNotFound")
        body = await request.json()
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (store.objects / obj["oid"]).is_file():
                entry["actions"] = {
                    "upload": {"href": f"{base(request)}/lfs-upload/{obj['oid']}?size={obj['size']}"},
                    "verify": {"href": f"{base(request)}/lfs-verify", "header": {}},
                }
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    @app.put("/lfs-upload/{oid}")
    async def lfs_upload(oid: str, size: int, request: Request):
        data = await request.body()  # a pre-signed URL, like S3's: no token needed
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            return error(400, f"uploaded content does not match oid {oid} and size {size}")
        store.put_object(data)
        return Response(status_code=200, headers={"ETag": f'"{oid}"'})

    @app.post("/lfs-verify")
    async def lfs_verify(request: Request):
        body = await request.json()
        path = store.objects / body["oid"]
        if not path.is_file() or path.stat().st_size != body["size"]:
            return error(404, f"object {body['oid']} was not uploaded")
        return {"success": True}

    @app.post("/api/{type_plural}/{owner}/{name}/commit/{revision}")
    async def commit(type_plural: str, owner: str, name: str, revision: str, request: Request):
        if (denied := needs_write(request)) is not None:
            return denied
        repo_type = REPO_TYPES.get(type_plural, "?")
        repo, _, missing = find(repo_type, f"{owner}/{name}")
        if missing:
            return missing
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        with store.lock:
            parent = repo["refs"].get(revision)
            files = dict(store.commit_files(repo, revision)[1]) if parent else {}
            header = {}
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    store.put_object(data)
                    files[value["path"]] = {"oid": git_blob_sha1(data), "size": len(data), "lfs": None,
                                            "sha256": hashlib.sha256(data).hexdigest()}
                elif key == "lfsFile":
                    path = store.objects / value["oid"]
                    if not path.is_file():
                        return error(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    size = path.stat().st_size
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {size}\n"
                    files[value["path"]] = {"oid": git_blob_sha1(pointer.encode()), "size": size, "sha256": value["oid"],
                                            "lfs": {"oid": value["oid"], "size": size, "pointerSize": len(pointer)}}
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                else:
                    return error(400, f"unknown commit operation {key!r}")
            oid = hashlib.sha1(json.dumps([parent, header, sorted(files.items()), time.time_ns()]).encode()).hexdigest()
            repo["commits"].append({"oid": oid, "parent": parent, "title": header.get("summary", ""), "date": _now(),
                                    "files": files})
            repo["refs"][revision] = oid
            store.save()
        url = f"{base(request)}/{URL_PREFIX[repo_type]}{owner}/{name}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None}

    def repo_info(repo_type: str, repo_id: str, revision: str, request: Request):
        repo, found, missing = find(repo_type, repo_id, revision)
        if missing:
            if repo is not None and not repo["commits"]:  # an empty repo: the Hub answers with no sha
                return {"id": repo_id, "author": repo_id.split("/")[0], "private": repo["private"], "siblings": [],
                        "sdk": repo["sdk"], "createdAt": repo["createdAt"]}
            return missing
        oid, files = found
        card = {}
        if "README.md" in files:
            text = (store.objects / files["README.md"]["sha256"]).read_text(errors="replace")
            if text.startswith("---"):
                try:
                    card = yaml.safe_load(text.split("---", 2)[1]) or {}
                except yaml.YAMLError:
                    card = {}
        commit_entry = next(c for c in repo["commits"] if c["oid"] == oid)
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": oid, "lastModified": commit_entry["date"],
            "createdAt": repo["createdAt"], "private": repo["private"], "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": card.get("tags") or [], "cardData": card or None,
            "siblings": [{"rfilename": p, "size": f["size"], "blobId": f["oid"],
                          **({"lfs": {"sha256": f["lfs"]["oid"], "size": f["size"], "pointerSize": f["lfs"]["pointerSize"]}}
                             if f["lfs"] else {})} for p, f in sorted(files.items())],
            "usedStorage": sum(f["size"] for f in files.values()),
        }
        if repo_type == "model":
            info.update(pipeline_tag=card.get("pipeline_tag"), library_name=card.get("library_name"))
        if repo_type == "space":
            info.update(sdk=repo["sdk"], runtime={"stage": "BUILDING"})
        return info

    @app.get("/api/{type_plural}/{owner}/{name}")
    def info_main(type_plural: str, owner: str, name: str, request: Request):
        return repo_info(REPO_TYPES.get(type_plural, "?"), f"{owner}/{name}", "main", request)

    @app.get("/api/{type_plural}/{owner}/{name}/revision/{revision:path}")
    def info_revision(type_plural: str, owner: str, name: str, revision: str, request: Request):
        return repo_info(REPO_TYPES.get(type_plural, "?"), f"{owner}/{name}", revision, request)

    def entries(files: dict, under: str, recursive: bool) -> list[dict]:
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        out, folders = [], set()
        for path, f in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                out.append(_file_entry(path, f))
        tree = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0} for d in sorted(folders)]
        return tree + out

    @app.get("/api/{type_plural}/{owner}/{name}/tree/{revision}")
    @app.get("/api/{type_plural}/{owner}/{name}/tree/{revision}/{path:path}")
    def tree(type_plural: str, owner: str, name: str, revision: str, request: Request, path: str = "",
             recursive: str = "false"):
        _, found, missing = find(REPO_TYPES.get(type_plural, "?"), f"{owner}/{name}", revision)
        if missing:
            return missing
        listed = entries(found[1], path, recursive.lower() in {"1", "true"})
        if path and not listed:
            return error(404, f"{path} does not exist on {revision}", "EntryNotFound")
        return listed

    @app.post("/api/{type_plural}/{owner}/{name}/paths-info/{revision}")
    async def paths_info(type_plural: str, owner: str, name: str, revision: str, request: Request):
        _, found, missing = find(REPO_TYPES.get(type_plural, "?"), f"{owner}/{name}", revision)
        if missing:
            return missing
        form = await request.form()
        wanted = form.getlist("paths") if form else (await request.json()).get("paths", [])
        files = found[1]
        return [_file_entry(p, files[p]) for p in wanted if p in files]

    @app.api_route("/{repo_path:path}/resolve/{revision}/{file_path:path}", methods=["GET", "HEAD"])
    def resolve_file(repo_path: str, revision: str, file_path: str, request: Request):
        repo_type, repo_id = _split_prefix(repo_path)
        _, found, missing = find(repo_type, repo_id, revision)
        if missing:
            return missing
        oid, files = found
        entry = files.get(file_path)
        if entry is None:
            return error(404, f"{file_path} does not exist on {revision}", "EntryNotFound")
        headers = {"X-Repo-Commit": oid, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(entry["size"]),
                            "Location": f"{cdn(request)}/lfs-objects/{entry['lfs']['oid']}"})
            return Response(status_code=302, headers=headers)
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(entry["size"])})
        return FileResponse(store.objects / entry["sha256"], headers=headers, media_type="application/octet-stream")

    @app.get("/lfs-objects/{oid}")
    def lfs_object(oid: str):
        path = store.objects / oid
        if len(oid) != 64 or not path.is_file():
            return error(404, "no such object")
        return FileResponse(path, media_type="application/octet-stream", headers={"ETag": f'"{oid}"'})

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    def unsupported(rest: str, request: Request):
        hint = " (this double speaks Git LFS, not Xet: set HF_HUB_DISABLE_XET=1 in the client)" if "xet" in rest else ""
        return error(501, f"the Hub test double does not serve {request.method} /api/{rest}{hint}")

    return app


def _split_prefix(repo_path: str) -> tuple[str, str]:
    """`alice/tiny-lm` → model; `spaces/alice/demo` → space; `datasets/alice/x` → dataset."""
    parts = repo_path.strip("/").split("/")
    if len(parts) == 3 and parts[0] in REPO_TYPES:
        return REPO_TYPES[parts[0]], "/".join(parts[1:])
    return "model", "/".join(parts)


def _file_entry(path: str, f: dict) -> dict:
    entry = {"type": "file", "path": path, "size": f["size"], "oid": f["oid"]}
    if f["lfs"]:
        entry["lfs"] = {"oid": f["lfs"]["oid"], "size": f["size"], "pointerSize": f["lfs"]["pointerSize"]}
    return entry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def hub_double(storage_dir: str | Path, port: int | None = None) -> Iterator[str]:
    """Serve the double from a thread of this process on 127.0.0.1; yield its base URL (the `HF_ENDPOINT`)."""
    import uvicorn

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(Path(storage_dir), url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Hub test double did not start")
        time.sleep(0.01)
    hub_double.app = app  # the running app: tests read `app.state.requests` and `app.state.storage`
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def client_env(endpoint: str, hf_home: str | Path | None = None, token: str | None = "hf_pocketlm_test_token") -> dict:
    """Environment for a client process of the double: `os.environ` plus the endpoint, Xet off, the Hub online,
    a fresh `HF_HOME` (an empty cache) when given, and `HF_TOKEN` (None: no token at all)."""
    env = {key: value for key, value in os.environ.items() if key not in {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}}
    env.update({"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"})
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
        env.pop("HF_HUB_CACHE", None)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the Hugging Face Hub test double on 127.0.0.1.")
    parser.add_argument("--storage", required=True, help="folder for the repos and uploaded files (kept between runs)")
    parser.add_argument("--port", type=int, default=0, help="(default: a free port)")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(create_app(Path(args.storage), url), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets)
        print(f"Hub test double serving {args.storage} at {url} (clients: HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1)",
              flush=True)

    server.startup = startup
    server.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
