"""The warm-up: what a drain's first batch would build, built once when its process starts."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_what_the_warm_up_built_is_left_out_of_every_collection(tmp_path):
    """A full collection walked every module and model built at start-up, 0.1–0.25 s each, every thread stopped.

    A fresh process, so that what other tests built does not count.
    """
    script = "import gc; from flows.warm import warm_up; before = gc.get_freeze_count(); warm_up(); " \
             "print(before, gc.get_freeze_count())"
    env = {**os.environ, "OUTBOUND_DATABASE_URL": f"sqlite:///{tmp_path}/state.db", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, frozen = done.stdout.split()[-2:]
    assert int(before) == 0 and int(frozen) > 100_000, done.stdout
