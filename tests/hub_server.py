"""A local stand-in for the Hugging Face hub on 127.0.0.1, for the download tests.

It speaks the part of the hub's HTTP API that huggingface_hub 2.x's `HfApi.list_repo_files` and
`snapshot_download` use, reached through `HF_ENDPOINT`:

- `GET /api/models/{repo}/tree/{revision}[/{path}]?recursive=...`: the file listing, paged with a
  `Link: <...>; rel="next"` header as the hub does (`page_size` entries a page);
- `GET /api/models/{repo}/revision/{revision}`: repo info; snapshot_download asks for it only when the
  revision is a branch or tag, to learn its commit;
- `HEAD|GET /{repo}/resolve/{revision}/{path}`: a file. Plain git files are answered here, with
  `ETag` (the git blob id), `X-Repo-Commit` and `Content-Length`; LFS files (the weights) get a 302
  to a second server on another port, the "CDN", with `X-Linked-Etag` (their sha256),
  `X-Linked-Size` and `X-Repo-Commit`, as the hub redirects to its CDN: the client does not follow
  a redirect off the hub's origin, takes the metadata from the 302 and then GETs the CDN URL itself;
- `GET /api/agent-harnesses`: a registry huggingface_hub fetches (best effort, cached a day in HF_HOME)
  to name AI agents in its user agent; answered empty.

Errors carry the hub's `X-Error-Code` header, which huggingface_hub turns into its exceptions: an
unknown repository is a 401 `RepoNotFound` (what the hub answers an anonymous client), an unknown
revision a 404 `RevisionNotFound`, a missing file a 404 `EntryNotFound`. The CDN serves byte ranges
(206), so a client can resume; a file named in `drop` is cut off mid-body, like a connection that
drops: the headers announce the full length, the server writes the body up to the middle of the file,
then closes the connection. It does so on every request, so the file can never be completed (a
resumed request, from the middle on, gets the headers and not one byte).

Every request is recorded in `HubServer.requests` as (server, method, path, Range header or None), the path
unquoted and without its query.
"""
import hashlib
import http.server
import io
import json
import re
import threading
import urllib.parse
from pathlib import Path

REPO = "google/bert_uncased_L-4_H-512_A-8"
COMMIT = "300d527ce921ae72fb9bcccf5b2ab0f7e1cccaee"  # params.yaml's model.revision
# What the real repository holds, at every commit: config and vocabulary in git, the weights in LFS.
REAL_FILES = ["config.json", "vocab.txt", "pytorch_model.bin", "flax_model.msgpack", "bert_model.ckpt.index",
              "bert_model.ckpt.data-00000-of-00001", "README.md", ".gitattributes"]
LFS_FILES = {"pytorch_model.bin", "flax_model.msgpack", "bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001"}
# The real config.json's keys, in its order: the TensorFlow release's bert_config.json, without model_type
# or architectures. (Check: https://huggingface.co/google/bert_uncased_L-4_H-512_A-8/raw/<COMMIT>/config.json)
TF_CONFIG_KEYS = ["hidden_size", "hidden_act", "initializer_range", "vocab_size", "hidden_dropout_prob",
                  "num_attention_heads", "type_vocab_size", "max_position_embeddings", "num_hidden_layers",
                  "intermediate_size", "attention_probs_dropout_prob"]
GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.ckpt.* filter=lfs diff=lfs merge=lfs -text
"""


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data):
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


def bert_repo_files(tiny_bert_dir, seed=0, tf_config=True):
    """The real repository's files, made from a tiny BERT saved with save_pretrained (tests/tiny.py).

    config.json has the real one's shape, the TensorFlow release's bert_config.json as it was: no
    `model_type`, no `architectures` (tf_config=False: the tiny model's own config.json instead).
    vocab.txt is the tiny model's. pytorch_model.bin is pickled with torch.save like the real one: a
    BertForPreTraining state dict, `bert.*` from the tiny model and a seeded random `cls.*`
    pre-training head whose decoder weight is tied to the word embeddings. The flax and TensorFlow
    weights, README.md and .gitattributes are small stand-ins the pipeline must never download.
    Returns ({path: bytes}, the state dict)."""
    import torch
    from transformers import BertForPreTraining
    from transformers.utils import logging

    tiny_bert_dir = Path(tiny_bert_dir)
    config = json.loads((tiny_bert_dir / "config.json").read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not the load report of the cls.* head, which a BertModel has not
    try:
        state = BertForPreTraining.from_pretrained(tiny_bert_dir).state_dict()
    finally:
        logging.set_verbosity(verbosity)
    pickled = io.BytesIO()
    torch.save(state, pickled)
    files = {
        "config.json": (json.dumps({key: config[key] for key in TF_CONFIG_KEYS}, indent=2).encode() + b"\n"
                        if tf_config else (tiny_bert_dir / "config.json").read_bytes()),
        "vocab.txt": (tiny_bert_dir / "vocab.txt").read_bytes(),
        "pytorch_model.bin": pickled.getvalue(),
        "flax_model.msgpack": b"flax weights: a stand-in that must never be downloaded\n",
        "bert_model.ckpt.index": b"TensorFlow checkpoint index: a stand-in that must never be downloaded\n",
        "bert_model.ckpt.data-00000-of-00001": b"TensorFlow checkpoint data: a stand-in that must never be downloaded\n",
        "README.md": b"---\nthumbnail: https://huggingface.co/front/thumbnails/google.png\nlicense: apache-2.0\n---\n"
                     b"BERT miniatures: a local stand-in of the model card\n",
        ".gitattributes": GITATTRIBUTES,
    }
    assert sorted(files) == sorted(REAL_FILES)
    return files, state


class HubServer:
    """`with HubServer({REPO: {COMMIT: files}}, branches={REPO: {"main": COMMIT}}) as endpoint:` serves
    those repositories at those commits until the block ends; `endpoint` goes in HF_ENDPOINT.

    repos: {repo id: {commit hash: {path: bytes}}}; branches: {repo id: {branch: commit hash}};
    drop: paths whose downloads are cut off mid-file (see the module docstring);
    static: {url path: bytes} served as plain files by the second server (a dataset URL, say), whose
    address is `self.static_url`; page_size: tree entries per page."""

    def __init__(self, repos, branches=None, drop=(), static=None, page_size=1000):
        self.repos, self.branches = repos, branches or {}
        self.drop, self.static, self.page_size = set(drop), dict(static or {}), page_size
        self.requests = []
        self.lock = threading.Lock()

    def __enter__(self):
        self.hub = self._start("hub")
        self.cdn = self._start("cdn")
        self.endpoint = f"http://127.0.0.1:{self.hub.server_port}"
        self.static_url = f"http://127.0.0.1:{self.cdn.server_port}"
        return self.endpoint

    def __exit__(self, *exc):
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def _start(self, role):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.hub_server, server.role = self, role
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def requested(self, server=None, method=None):
        """Paths requested, in order, optionally only those to one server ("hub" or "cdn") or with one method."""
        with self.lock:
            return [path for role, verb, path, _ in self.requests
                    if (server is None or role == server) and (method is None or verb == method)]

    def resolve(self, repo, revision):
        """The commit a revision names, or None."""
        commits = self.repos[repo]
        if revision in commits:
            return revision
        return self.branches.get(repo, {}).get(revision)

    def blob_url(self, data):
        return f"{self.static_url}/lfs/{hashlib.sha256(data).hexdigest()}"

    def blob(self, sha256):
        """(path, bytes) of an LFS file by its sha256, or None."""
        for commits in self.repos.values():
            for files in commits.values():
                for path, data in files.items():
                    if path in LFS_FILES and hashlib.sha256(data).hexdigest() == sha256:
                        return path, data
        return None


TREE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?")
INFO = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<revision>[^/]+)")
RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)")
RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx talks to the hub

    def do_HEAD(self):
        self.handle_request(head=True)

    def do_GET(self):
        self.handle_request(head=False)

    def log_message(self, *args):
        pass

    def handle_request(self, head):
        hub, role = self.server.hub_server, self.server.role
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        with hub.lock:
            hub.requests.append((role, self.command, path, self.headers.get("Range")))
        if role == "cdn":
            if path in hub.static:
                return self.send_bytes(hub.static[path], head)
            found = hub.blob(path.removeprefix("/lfs/")) if path.startswith("/lfs/") else None
            if found is None:
                return self.send_error_code(404, "EntryNotFound", "Not found", head)
            name, data = found
            return self.send_bytes(data, head, drop=name in hub.drop)
        # The revision is matched on the raw (still quoted) path: a branch may be "refs/pr/1", sent as refs%2Fpr%2F1.
        for pattern, answer in ((TREE, self.tree), (INFO, self.info), (RESOLVE, self.resolve)):
            match = pattern.fullmatch(url.path)
            if match:
                fields = {key: urllib.parse.unquote(value or "") for key, value in match.groupdict().items()}
                return answer(hub, head=head, query=urllib.parse.parse_qs(url.query), **fields)
        if url.path == "/api/agent-harnesses":  # huggingface_hub fetches this registry once a day, best effort
            return self.send_json({"standardEnvVars": [], "harnesses": {}}, head)
        self.send_error_code(404, None, "Not found", head)

    def commit_or_error(self, hub, repo, revision, head):
        """The commit of repo at revision; None after answering the hub's error when either is unknown."""
        if repo not in hub.repos:
            self.send_error_code(401, "RepoNotFound", "Repository not found", head)
            return None
        commit = hub.resolve(repo, revision)
        if commit is None:
            self.send_error_code(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return commit

    def tree(self, hub, repo, revision, path, query, head):
        commit = self.commit_or_error(hub, repo, revision, head)
        if commit is None:
            return
        files = hub.repos[repo][commit]
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{path}/" if path else ""
        entries, folders = [], set()
        for name, data in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if name in LFS_FILES:
                pointer = lfs_pointer(data)
                entries.append({"type": "file", "oid": git_blob_id(pointer), "size": len(data), "path": name,
                                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": len(pointer)}})
            else:
                entries.append({"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name})
        entries += [{"type": "directory", "oid": git_blob_id(name.encode()), "size": 0, "path": name}
                    for name in sorted(folders)]
        if path and not entries:
            return self.send_error_code(404, "EntryNotFound", f"{path} does not exist on {revision}", head)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + hub.page_size]
        headers = {}
        if start + hub.page_size < len(entries):
            params = {key: values[0] for key, values in query.items()} | {"cursor": start + hub.page_size}
            headers["Link"] = f'<{hub.endpoint}{urllib.parse.urlsplit(self.path).path}?{urllib.parse.urlencode(params)}>; rel="next"'
        self.send_json(page, head, headers)

    def info(self, hub, repo, revision, query, head):
        commit = self.commit_or_error(hub, repo, revision, head)
        if commit is None:
            return
        self.send_json({"id": repo, "modelId": repo, "sha": commit, "private": False, "disabled": False,
                        "gated": False, "tags": [], "siblings": [{"rfilename": name} for name in sorted(hub.repos[repo][commit])]},
                       head)

    def resolve(self, hub, repo, revision, path, query, head):
        commit = self.commit_or_error(hub, repo, revision, head)
        if commit is None:
            return
        files = hub.repos[repo][commit]
        if path not in files:
            return self.send_error_code(404, "EntryNotFound", f"{path} does not exist on {revision}", head,
                                        {"X-Repo-Commit": commit})
        data = files[path]
        if path in LFS_FILES:
            sha256 = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            for key, value in {"Location": hub.blob_url(data), "X-Repo-Commit": commit, "ETag": f'"{sha256}"',
                               "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                               "Content-Length": "0"}.items():
                self.send_header(key, value)
            self.end_headers()
            return
        self.send_bytes(data, head, {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'})

    def send_bytes(self, data, head, headers=None, drop=False):
        """The file, or the byte range asked for; with drop, cut off in the middle of the file."""
        start, end = 0, len(data)
        wanted = RANGE.fullmatch(self.headers.get("Range", ""))
        if wanted:
            start = int(wanted[1])
            end = int(wanted[2]) + 1 if wanted[2] else len(data)
        self.send_response(206 if wanted else 200)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        if drop:
            self.wfile.write(data[start:max(start, len(data) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:end])

    def send_json(self, value, head, headers=None, status=200):
        body = json.dumps(value).encode()
        self.send_response(status)
        for key, header in (headers or {}).items():
            self.send_header(key, header)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error_code(self, status, code, message, head, headers=None):
        """An error as the hub sends it: X-Error-Code / X-Error-Message headers and {"error": message}."""
        error_headers = {"X-Request-Id": f"Root=1-local-{id(self):x}",  # the hub names each request
                         **({"X-Error-Code": code} if code else {}), "X-Error-Message": message, **(headers or {})}
        self.send_json({"error": message}, head, error_headers, status)
