"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests of real huggingface_hub code.

It speaks the subset of the Hub API that huggingface_hub 2.4 uses to download (``snapshot_download``,
``hf_hub_download``) and to upload (``create_repo``, ``upload_folder``), for model repos:

- ``GET  /api/models/{repo}[/revision/{rev}]``        repo info (``sha``, ``siblings``)
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``     file listing (snapshot_download lists files with it)
- ``POST /api/models/{repo}/paths-info/{rev}``        info on given paths
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``           file metadata / content (``X-Repo-Commit``, ``ETag``,
  ``Content-Length``; ``Range`` is honoured, which is how the client resumes an interrupted download)
- ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}`` (every file is "regular", so
  nothing goes through LFS or Xet), ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 files),
  ``POST /api/validate-yaml`` (README.md front matter is accepted as is)

Missing things answer 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``,
which the client turns into ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``EntryNotFoundError``.
All files are plain git blobs (ETag = git blob sha1); no Xet headers are sent, so downloads use plain HTTP.
Any token is accepted.

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
_ROUTES = [  # (method, regex over the raw path, handler name); revisions arrive URL-quoted
    ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "_repo_info"),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "_tree"),
    ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", "_paths_info"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "_preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "_commit"),
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

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
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

    def fail_next(self, path_part: str, mode: str, *, method: str = "GET", times: int = 1) -> None:
        """Spoil the next ``times`` responses to ``method`` requests whose path contains ``path_part``."""
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, not {mode!r}")
        with self._lock:
            self._faults += [(method, path_part, mode)] * times

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

    def _lookup(self, repo_id: str, revision: str | None) -> tuple[Repo, str]:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        sha = repo.resolve(unquote(revision or "main"))
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision or 'main')}")
        return repo, sha

    # -- API handlers: (match, query, body) -> (status, payload, extra headers) ------------------------
    def _repo_info(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"])
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in repo.commits[sha].items()]
        return 200, {"id": m["repo"], "modelId": m["repo"], "sha": sha, "private": False, "siblings": siblings}, {}

    def _tree(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"])
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
        repo, sha = self._lookup(m["repo"], m["rev"])
        files = repo.commits[sha]
        wanted = parse_qs(body.decode()).get("paths", [])
        return 200, [_file_entry(p, files[p]) for p in wanted if p in files], {}

    def _create_repo(self, m: dict, query: dict, body: bytes):
        payload = json.loads(body)
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, None, "only model repos are served")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        with self._lock:
            exists = repo_id in self.repos
            if not exists:
                self._new_commit(self.repos.setdefault(repo_id, Repo()), "main", {})
        if exists:  # the Hub names the repo in its 409 answer too; create_repo(exist_ok=True) reads it
            message = "You already created this model repo"
            return 409, {"error": message, "url": f"{self.endpoint}/{repo_id}"}, {"X-Error-Message": message}
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}, {}

    def _preupload(self, m: dict, query: dict, body: bytes):
        repo, sha = self._lookup(m["repo"], m["rev"])
        existing = repo.commits[sha]
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_sha1(existing[f["path"]]) if f["path"] in existing else None}
                 for f in json.loads(body)["files"]]
        return 200, {"files": files, "commitOid": sha}, {}

    def _commit(self, m: dict, query: dict, body: bytes):
        branch = unquote(m["rev"])
        with self._lock:
            repo, parent = self._lookup(m["repo"], m["rev"])
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
        repo, sha = self._lookup(m["repo"], m["rev"])
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

    do_HEAD = do_POST = do_GET

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        url = urlsplit(self.path)
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
