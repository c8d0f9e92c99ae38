"""An interrupted `tuneforge` program (console script / python -m) ends without the interpreter's teardown
(cli.exit_now): after SIGINT under load that teardown took 50 s of the exit (docker stop allows 10 s). Its
exit code is 128 + signum, atexit handlers still run, and objects that only teardown would free are not."""

import subprocess
import sys
import textwrap


def test_interrupted_program_exits_at_once_with_atexit_but_without_teardown(tmp_path):
    script = textwrap.dedent(f"""
        import argparse, atexit, sys
        from tuneforge import cli
        from tuneforge.errors import TrainingInterrupted

        def train(_args):
            print("partial line, unflushed", end="")
            raise TrainingInterrupted(15, "ckpt/step-0000003")

        class FreedByTeardown:
            def __del__(self):
                open({str(tmp_path / "teardown")!r}, "w").close()

        kept = FreedByTeardown()
        atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").close())
        cli.parse = lambda parser, argv: argparse.Namespace(fn=train, debug=False)
        sys.argv = ["tuneforge", "train", "c.yaml"]
        cli.main()
        open({str(tmp_path / "returned")!r}, "w").close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + 15, done.stderr
    assert "complete checkpoint at ckpt/step-0000003" in done.stderr and done.stdout == "partial line, unflushed"
    assert (tmp_path / "atexit").exists()
    assert not (tmp_path / "returned").exists() and not (tmp_path / "teardown").exists()
