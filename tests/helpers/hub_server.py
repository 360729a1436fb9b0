"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests of real huggingface_hub code.

It speaks the subset of the Hub API that huggingface_hub 2.4 uses to download (``snapshot_download``,
``hf_hub_download``) and to upload (``create_repo``, ``upload_folder``), for model repos, and to create and
set up Spaces (``create_repo(repo_type="space")``, ``upload_folder``, Space variables and hardware):

- ``GET  /api/models/{repo}[/revision/{rev}]``        repo info (``sha``, ``siblings``)
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``     file listing (snapshot_download lists files with it)
- ``POST /api/models/{repo}/paths-info/{rev}``        info on given paths
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``           file metadata / content (``X-Repo-Commit``, ``ETag``,
  ``Content-Length``; ``Range`` is honoured, which is how the client resumes an interrupted download)
- ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}`` (every file is "regular", so
  nothing goes through LFS or Xet), ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 files),
  ``POST /api/validate-yaml`` (README.md front matter is accepted as is)
- Spaces: the same info/tree/paths-info/preupload/commit routes under ``/api/spaces/{repo}``;
  ``GET|POST|DELETE /api/spaces/{repo}/variables``; ``POST /api/spaces/{repo}/hardware`` and
  ``GET /api/spaces/{repo}/runtime``. A Space keeps its ``sdk``, ``private``, ``variables`` and ``hardware``
  (``HubServer.space(repo_id)``); Spaces live apart from models (``HubServer.spaces``), as on the Hub.

Missing things answer 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``,
which the client turns into ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``EntryNotFoundError``.
All files are plain git blobs (ETag = git blob sha1); no Xet headers are sent, so downloads use plain HTTP.
Any token is accepted, unless ``HubServer(tokens={...})`` names the valid ones: then every request with
another token, or none, answers 401 as the Hub does for a bad token.

Pointing huggingface_hub at the server. The library reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_TELEMETRY`` once, at import, into ``huggingface_hub.constants``:

- Subprocess (e.g. the CLI): ``subprocess.run(cmd, env=server.environ(cache_dir))``, or
  ``server.environ(cache_dir, HF_HUB_OFFLINE="1")`` for an offline run against that cache.
- In process: ``hub_fixtures.hub_env(monkeypatch, server, cache_dir)`` (or the ``hub`` fixture there).
  Setting ``constants.ENDPOINT`` alone is not enough: ``hf_hub_download`` builds URLs from
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` and the module-level ``create_repo``/``upload_folder`` are
  bound to an ``HfApi`` whose endpoint was fixed at import; ``hub_env`` patches all of them.

Faults: ``free_port_url()`` is an endpoint nobody listens on (connection refused). ``fail_next(path_part,
mode)`` spoils the next matching response: ``"500"``, ``"corrupt"`` (same length, wrong bytes: the client
does not check content hashes of plain HTTP downloads) or ``"disconnect"`` (headers with the full
``Content-Length``, half the body, then the connection closes; for HEAD nothing is sent, and
``hf_hub_download`` raises ``httpx2.RemoteProtocolError`` as is). The client
retries an interrupted download by itself after 1 s, up to 5 times (with a ``Range`` request for what it
kept; it keeps only whole ``constants.DOWNLOAD_CHUNK_SIZE`` chunks, 10 MB): queue a ``"500"`` after a
``"disconnect"`` to make it fail for good. A refused connection makes ``hf_hub_download`` retry with
backoff for ~23 s, while ``snapshot_download`` gives up at once; the ``no_retry_wait`` fixture in
hub_fixtures skips these sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

FAULT_MODES = ("disconnect", "500", "corrupt")
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_KIND = r"(?P<kind>models|spaces)"  # repo type, as in the API's paths
_ROUTES = [  # (method, regex over the raw path, handler name); revisions arrive URL-quoted
    ("GET", rf"/api/spaces/{_REPO}/variables", "_get_variables"),
    ("POST", rf"/api/spaces/{_REPO}/variables", "_add_variable"),
    ("DELETE", rf"/api/spaces/{_REPO}/variables", "_delete_variable"),
    ("POST", rf"/api/spaces/{_REPO}/hardware", "_request_hardware"),
    ("GET", rf"/api/spaces/{_REPO}/runtime", "_runtime"),
    ("GET", rf"/api/{_KIND}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "_repo_info"),
    ("GET", rf"/api/{_KIND}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "_tree"),
    ("POST", rf"/api/{_KIND}/{_REPO}/paths-info/(?P<rev>[^/]+)", "_paths_info"),
    ("POST", rf"/api/{_KIND}/{_REPO}/preupload/(?P<rev>[^/]+)", "_preupload"),
    ("POST", rf"/api/{_KIND}/{_REPO}/commit/(?P<rev>[^/]+)", "_commit"),
    ("POST", r"/api/repos/create", "_create_repo"),
    ("POST", r"/api/validate-yaml", "_validate_yaml"),
    ("GET", r"/api/agent-harnesses", "_agent_harnesses"),
    ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "_resolve"),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "_resolve"),
]


class Request(NamedTuple):
    method: str
    path: str  # raw request path with query, as sent
    headers: dict[str, str]  # names in lower case


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: content}
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    # Spaces only: the SDK, visibility, variables ({key: {"value", "description", "updatedAt"}}), hardware asked for
    sdk: str | None = None
    private: bool = False
    variables: dict[str, dict] = field(default_factory=dict)
    hardware: str | None = None

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.commit = status, code, commit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def free_port_url() -> str:
    """An http://127.0.0.1 URL on a port that was free a moment ago: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class HubServer:
    """In-memory Hub on a free 127.0.0.1 port, served from a background thread while the context is open."""

    def __init__(self, tokens: set[str] | None = None) -> None:
        self.repos: dict[str, Repo] = {}  # model repos
        self.spaces: dict[str, Repo] = {}  # Space repos
        self.tokens = tokens  # None: any token (or none) is accepted
        self.requests: list[Request] = []
        self._faults: list[tuple[str, str, str]] = []  # (method, path substring, mode), in order
        self._lock = threading.Lock()
        self._commits = 0
        self._httpd: ThreadingHTTPServer | None = None
        self.endpoint = ""
        self.cache_dir: Path | None = None  # the client cache that hub_fixtures.hub_env pointed at this server

    def __enter__(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def environ(self, cache_dir: str | Path, **extra: str) -> dict[str, str]:
        """Environment for a subprocess whose huggingface_hub should use this server and ``cache_dir``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update({"HF_ENDPOINT": self.endpoint, "HF_HUB_CACHE": str(cache_dir), "HF_TOKEN": "test",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra})
        return env

    # -- state -------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes] | Path, revision: str = "main") -> str:
        """Make branch or tag ``revision`` (created if new) of ``repo_id`` hold exactly ``files``; return the commit."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            return self._new_commit(repo, revision, dict(files))

    def set_ref(self, repo_id: str, ref: str, revision: str) -> str:
        """Point branch or tag ``ref`` at the commit ``revision`` resolves to; return that commit."""
        repo, sha = self._lookup(repo_id, revision)
        repo.refs[ref] = sha
        return sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (e.g. to check what an upload put there)."""
        repo, sha = self._lookup(repo_id, revision)
        return repo.commits[sha]

    def space(self, repo_id: str) -> Repo:
        """The Space ``repo_id`` (its ``sdk``, ``variables``, ``hardware``, ``commits``); KeyError when missing."""
        return self.spaces[repo_id]

    def fail_next(self, path_part: str, mode: str, *, method: str = "GET", times: int = 1) -> None:
        """Spoil the next ``times`` responses to ``method`` requests whose path contains ``path_part``."""
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, not {mode!r}")
        with self._lock:
            self._faults += [(method, path_part, mode)] * times

    def clear_faults(self) -> None:
        """Answer every request normally again."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for i, (m, part, mode) in enumerate(self._faults):
                if m == method and part in path:
                    del self._faults[i]
                    return mode
        return None

    def _new_commit(self, repo: Repo, branch: str, files: dict[str, bytes]) -> str:
        self._commits += 1
        digest = hashlib.sha1(f"{self._commits}:{branch}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_sha1(files[path])}".encode())
        repo.commits[sha := digest.hexdigest()] = files
        repo.refs[branch] = sha
        return sha

    def _lookup(self, repo_id: str, revision: str | None, kind: str | None = "models") -> tuple[Repo, str]:
        repo = (self.spaces if kind == "spaces" else self.repos).get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        sha = repo.resolve(unquote(revision or "main"))
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision or 'main')}")
        return repo, sha

    # -- API handlers: (match, query, body) -> (status, payload, extra headers) ------------------------
    def _repo_info(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"], m["kind"])
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in repo.commits[sha].items()]
        info = {"id": m["repo"], "sha": sha, "private": repo.private, "siblings": siblings}
        info.update({"sdk": repo.sdk} if m["kind"] == "spaces" else {"modelId": m["repo"]})
        return 200, info, {}

    def _tree(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"], m["kind"])
        prefix = unquote(m["path"]).strip("/") + "/" if m["path"] else ""
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path, data in sorted(repo.commits[sha].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if recursive or "/" not in rest:
                entries[path] = _file_entry(path, data)
            else:
                folder = prefix + rest.split("/")[0]
                entries[folder] = {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0}
        return 200, list(entries.values()), {}

    def _paths_info(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"], m["kind"])
        files = repo.commits[sha]
        wanted = parse_qs(body.decode()).get("paths", [])
        return 200, [_file_entry(p, files[p]) for p in wanted if p in files], {}

    def _create_repo(self, m: dict, query: dict, body: bytes):
        payload = json.loads(body)
        kind = payload.get("type") or "model"
        if kind not in ("model", "space"):
            raise HubError(400, None, "only model and Space repos are served")
        if kind == "space" and payload.get("sdk") not in ("gradio", "docker", "static"):
            raise HubError(400, None, f"Invalid Space SDK: {payload.get('sdk')!r}")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repos, prefix = (self.spaces, "spaces/") if kind == "space" else (self.repos, "")
        with self._lock:
            exists = repo_id in repos
            if not exists:
                repo = repos.setdefault(repo_id, Repo())
                if kind == "space":
                    repo.sdk, repo.private = payload["sdk"], payload.get("visibility") == "private"
                    repo.hardware = payload.get("hardware") or "cpu-basic"
                self._new_commit(repo, "main", {})
        url = f"{self.endpoint}/{prefix}{repo_id}"
        if exists:  # the Hub names the repo in its 409 answer too; create_repo(exist_ok=True) reads it
            message = f"You already created this {kind} repo"
            return 409, {"error": message, "url": url}, {"X-Error-Message": message}
        return 200, {"url": url, "name": repo_id}, {}

    def _space(self, repo_id: str) -> Repo:
        if repo_id not in self.spaces:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return self.spaces[repo_id]

    def _get_variables(self, m: dict, query: dict, body: bytes):
        return 200, self._space(m["repo"]).variables, {}

    def _add_variable(self, m: dict, query: dict, body: bytes):
        payload, space = json.loads(body), self._space(m["repo"])
        with self._lock:
            space.variables[payload["key"]] = {"value": payload["value"], "description": payload.get("description"),
                                               "updatedAt": "2026-01-01T00:00:00.000Z"}
        return 200, space.variables, {}

    def _delete_variable(self, m: dict, query: dict, body: bytes):
        space = self._space(m["repo"])
        with self._lock:
            space.variables.pop(json.loads(body)["key"], None)
        return 200, space.variables, {}

    def _request_hardware(self, m: dict, query: dict, body: bytes):
        space = self._space(m["repo"])
        space.hardware = json.loads(body)["flavor"]
        return self._runtime(m, query, b"")

    def _runtime(self, m: dict, query: dict, body: bytes):
        space = self._space(m["repo"])
        return 200, {"stage": "BUILDING", "hardware": {"current": None, "requested": space.hardware}}, {}

    def _preupload(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"], m["kind"])
        existing = repo.commits[sha]
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_sha1(existing[f["path"]]) if f["path"] in existing else None}
                 for f in json.loads(body)["files"]]
        return 200, {"files": files, "commitOid": sha}, {}

    def _commit(self, m: dict, query: dict, body: bytes):
        branch = unquote(m["rev"])
        with self._lock:
            repo, parent = self._lookup(m["repo"], m["rev"], m["kind"])
            if branch not in repo.refs:
                raise HubError(400, None, f"Can only commit to a branch, not to {branch}")
            files = dict(repo.commits[parent])
            for line in body.splitlines():
                op = json.loads(line)
                key, value = op["key"], op["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                elif key != "header":
                    raise HubError(400, None, f"commit operation {key!r} is not supported")
            sha = self._new_commit(repo, branch, files)
        return 200, {"commitUrl": f"{self.endpoint}/{m['repo']}/commit/{sha}", "commitOid": sha,
                     "success": True, "pullRequestUrl": None}, {}

    def _validate_yaml(self, m: dict, query: dict, body: bytes):
        return 200, {"errors": [], "warnings": []}, {}

    def _agent_harnesses(self, m: dict, query: dict, body: bytes):
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def _resolve(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"], "models")
        path = unquote(m["path"])
        if path not in repo.commits[sha]:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {unquote(m['rev'])}", commit=sha)
        data = repo.commits[sha][path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        return 200, data, headers


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        url = urlsplit(self.path)
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if self.hub.tokens is not None and token not in self.hub.tokens:
            message = "Invalid credentials in Authorization header"
            self._reply(401, json.dumps({"error": message}).encode(),
                        {"Content-Type": "application/json", "X-Error-Message": message})
            return
        for method, pattern, name in _ROUTES:
            if method == self.command and (match := re.fullmatch(pattern, url.path)):
                try:
                    status, payload, headers = getattr(self.hub, name)(match.groupdict(), parse_qs(url.query), body)
                except HubError as error:
                    status, payload = error.status, {"error": str(error)}
                    headers = {"X-Error-Message": str(error)}
                    headers.update({"X-Error-Code": error.code} if error.code else {})
                    headers.update({"X-Repo-Commit": error.commit} if error.commit else {})
                break
        else:
            status, payload, headers = 404, {"error": f"no route for {self.command} {url.path}"}, {}
        if not isinstance(payload, bytes):
            payload, headers = json.dumps(payload).encode(), {**headers, "Content-Type": "application/json"}
        self._reply(status, payload, headers)

    def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        if status == 200 and (ranged := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))):
            start, end = int(ranged[1]), int(ranged[2] or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start:end + 1]
        fault = self.hub._take_fault(self.command, self.path)
        if fault == "500":
            status, data, headers = 500, b'{"error": "Internal Error"}', {"Content-Type": "application/json"}
        elif fault == "corrupt":
            data = bytes(b ^ 0xFF for b in data)
        elif fault == "disconnect" and self.command == "HEAD":
            self.close_connection = True
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data[: len(data) // 2] if fault == "disconnect" else data)
        if fault == "disconnect":
            self.wfile.flush()
            self.close_connection = True
