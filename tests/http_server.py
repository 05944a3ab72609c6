"""A small HTTP server on 127.0.0.1 that misbehaves on purpose, for the download tests."""
import http.server
import threading
import time

BODY = b"query,title,label\ncovid masks,Face masks in schools,1\ncovid masks,Football league,0\n"


class Handler(http.server.BaseHTTPRequestHandler):
    hits = {}

    def do_GET(self):
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/missing.csv":
            return self.send_error(404)
        if self.path == "/flaky.csv" and Handler.hits[self.path] == 1:
            return self.send_error(503)
        if self.path == "/stalled.csv":
            time.sleep(3)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.path == "/truncated.csv":
            self.wfile.write(BODY[: len(BODY) // 2])
            return
        if self.path == "/slow.csv":
            for start in range(0, len(BODY), 20):
                self.wfile.write(BODY[start:start + 20])
                self.wfile.flush()
                time.sleep(0.2)
            return
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class FlakyServer:
    def __enter__(self):
        Handler.hits = {}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
