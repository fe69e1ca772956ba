"""Ending a child process the API or a command started: asked first, then made to."""

import subprocess


def end(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL; returns once it has exited."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
