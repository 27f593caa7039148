"""A stand-in for the Hugging Face Hub's HTTP API on loopback: enough for ``snapshot_download``.

Repos are private when given a token; a wrong or missing token gets what the Hub answers for a
repo it will not show (401 with ``X-Error-Code: RepoNotFound``). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, tuple[dict[str, bytes], str | None]] = {}  # repo -> files, token
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _serve(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                auth = self.headers.get("authorization")
                hub.requests.append((self.command, path, auth))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    rest = parts[4:]
                else:
                    repo = "/".join(parts[0:2])
                    rest = parts[2:]
                entry = hub.repos.get(repo)
                if entry is None or (entry[1] is not None and auth != f"Bearer {entry[1]}"):
                    self._send(
                        404 if entry is None else 401,
                        b'{"error":"Repository not found"}',
                        {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"},
                        head,
                    )
                    return
                files, _ = entry
                if parts[:2] == ["api", "models"] and rest[:1] == ["revision"]:
                    body = json.dumps(
                        {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                    ).encode()
                    self._send(200, body, {"Content-Type": "application/json"}, head)
                elif parts[:2] == ["api", "models"] and rest[:1] == ["tree"]:
                    body = json.dumps(
                        [
                            {
                                "type": "file",
                                "path": f,
                                "size": len(b),
                                "oid": hashlib.sha1(b).hexdigest(),
                            }
                            for f, b in files.items()
                        ]
                    ).encode()
                    self._send(200, body, {"Content-Type": "application/json"}, head)
                elif rest[:1] == ["resolve"]:
                    name = "/".join(rest[2:])
                    if name not in files:
                        self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                        return
                    b = files[name]
                    self._send(
                        200,
                        b,
                        {
                            "X-Repo-Commit": COMMIT,
                            "ETag": f'"{hashlib.sha1(b).hexdigest()}"',
                            "Content-Type": "application/octet-stream",
                        },
                        head,
                    )
                else:
                    self._send(404, b"", {}, head)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo: str, directory: Path, token: str | None = None) -> None:
        self.repos[repo] = (
            {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()},
            token,
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
