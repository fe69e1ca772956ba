"""The event API served over real HTTP (uvicorn in a thread), with its log captured."""

import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class LogCapture(logging.Handler):
    """Every record, formatted with its traceback if it has one."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        line = f"{record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(line)

    def tracebacks(self) -> list[str]:
        return [line for line in self.lines if "Traceback" in line or line.startswith(("ERROR", "CRITICAL"))]


@contextmanager
def served(app) -> Iterator[tuple[str, LogCapture]]:
    """Serve `app` on a free 127.0.0.1 port; yield its base URL and the captured log."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    capture = LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    saved_level = root.level
    root.setLevel(logging.INFO)
    # log_config=None: uvicorn's records go to the root logger, where they are captured.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", capture
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        root.removeHandler(capture)
        root.setLevel(saved_level)
