"""The HTTP part every sandbox server shares: a threaded server, fault injection, JSON answers.

A sandbox subclasses `HttpSandbox` and calls `_serve(...)` once its state is ready. Each request is
logged in `requests`, then passes `_front` (by default straight on) and `faults` (a
`sandbox.faults.FaultInjector`, looked up per request so a test or bench may wrap it) to the app:
`_app`, which answers with `_answer(request) -> Response`, or a WSGI app of the sandbox's own. An
`HttpError` raised below `_answer` is answered with its status and JSON payload; anything else
reaches `_crash`. The server closes each connection after one answer, as werkzeug's always does.
"""

import json
import threading

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sandbox.faults import FaultInjector, FaultPlan


class _QuietHandler(WSGIRequestHandler):
    def log(self, *args, **kwargs):  # the sandbox is not the thing being debugged
        pass


class HttpError(Exception):
    """An error answer: `status` with `payload` as JSON, plus `headers`."""

    content_type = "application/json"

    def __init__(self, status: int, payload, headers=()):
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, list(headers)


def json_response(payload, status: int = 200, headers=(), content_type: str = "application/json") -> Response:
    """`payload` as a JSON answer (None: an empty body)."""
    body = b"" if payload is None else json.dumps(payload).encode()
    return Response(body, status=status, headers=list(headers), content_type=content_type)


class HttpSandbox:
    """Serve on http(s)://<host>:<port> from a thread; a with-block starts and stops it."""

    name = "sandbox"

    def _serve(self, host: str, port: int, faults: FaultPlan | None, tls: tuple[str, str] | None = None,
               app=None) -> None:
        """Bind the server (`tls`: certificate and key files for HTTPS); `start()` begins serving."""
        self.requests: list[tuple[str, str]] = []
        self.faults = FaultInjector(app or self._app, faults)
        self._scheme = "https" if tls else "http"
        self._server = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietHandler,
                                   ssl_context=tls)
        self._thread: threading.Thread | None = None

    def _answer(self, request: Request) -> Response:
        raise NotImplementedError

    def _crash(self, exc: Exception) -> Response:
        """The answer to a sandbox bug (by default the server's own 500)."""
        raise exc

    def _wsgi(self, environ, start_response):
        self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return self._front(environ, start_response)

    def _front(self, environ, start_response):
        return self.faults(environ, start_response)

    def _app(self, environ, start_response):
        try:
            response = self._answer(Request(environ))
        except HttpError as exc:
            response = json_response(exc.payload, exc.status, exc.headers, exc.content_type)
        except Exception as exc:
            response = self._crash(exc)
        return response(environ, start_response)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait for a serve_forever that never began
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
