"""The console entry point: it ends the process without the interpreter's teardown, and loses nothing on the way."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A program that registers work a normal exit would do, then hands over to transfer_core.cli.run.
PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: out.with_suffix(".atexit").write_text("ran"))
def late():
    time.sleep(0.5)
    out.with_suffix(".thread").write_text("done")
threading.Thread(target=late).start()  # a non-daemon thread: a normal exit waits for it
print("buffered line", end="")  # no newline: sits in the buffer until flushed
sys.argv = ["transfer-core", *sys.argv[2:]]
from transfer_core.cli import run
run()
"""


def _run(tmp_path, *args):
    out = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(out), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    return done, out


def test_a_command_that_succeeds_exits_0_after_threads_atexit_handlers_and_output(tmp_path):
    done, out = _run(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("buffered line") and "subset-run" in done.stdout
    assert out.with_suffix(".atexit").read_text() == "ran"
    assert out.with_suffix(".thread").read_text() == "done"


def test_a_refused_command_exits_1_with_its_sentence(tmp_path):
    done, out = _run(tmp_path, "subset-run", "--profile", "no-such-profile")
    assert done.returncode == 1
    assert "unknown profile 'no-such-profile'" in done.stderr
    assert out.with_suffix(".atexit").read_text() == "ran"


def test_python_dash_m_uses_the_same_entry_point():
    done = subprocess.run([sys.executable, "-m", "transfer_core.cli", "subset-run", "--profile", "no-such-profile"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "unknown profile 'no-such-profile'" in done.stderr


def test_under_a_profiler_the_process_exits_normally_so_the_profile_is_written(tmp_path):
    profile = tmp_path / "cli.prof"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "transfer_core.cli", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert profile.stat().st_size > 0
