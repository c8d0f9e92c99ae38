"""tuneforge studio in a real headless Chromium (Debian's `chromium`, driven by Playwright), against a real
`tuneforge studio` process and real `tuneforge train` processes on the tiny model: a bad data file uploaded from
the file picker and its line numbers before launch, the good file picked, a field error, an sft run created from
the form, its curve gaining points and eval points while it trains, the browser closed and the studio killed
mid-run (the run goes on; a restarted studio shows it live), stop (a complete checkpoint), resume to the end, a
compare with a run started from the command line, a chat with the run beside its base, the run pane's buttons
disabled until it shows the run picked, and a verified merge. Screenshots: see DOCS_IMAGES below (docs/studio.md).

Chromium is not optional here: without it (or Playwright) these tests FAIL with what to install; `make setup`
installs it with apt-get when run as root. TUNEFORGE_SKIP_BROWSER=1 skips them, and only when asked explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import tiny

CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots land in the test's tmp dir; TUNEFORGE_STUDIO_SCREENSHOTS=1 writes docs/images/studio_*.png instead (how
# docs/studio.md's were made), so an ordinary test run leaves the work tree's images alone.
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("TUNEFORGE_SKIP_BROWSER") == "1":
        pytest.skip("TUNEFORGE_SKIP_BROWSER=1: browser tests skipped on request")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (make setup)", pytrace=False)
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make setup does it as root), or set "
                    "TUNEFORGE_CHROMIUM=PATH; TUNEFORGE_SKIP_BROWSER=1 skips these tests explicitly", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Studio:
    """A `tuneforge studio` process in `cwd`; kill() is SIGKILL (no goodbye), start() a fresh one, same port."""

    def __init__(self, cwd: Path, allow: Path) -> None:
        self.cwd, self.allow, self.proc = cwd, allow, None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "studio", "--port", str(self.port), "--runs-dir", "runs",
             "--allow", str(self.allow)], cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"studio exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "api/schema", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("studio did not answer in 90 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def _wait(check, timeout: float, what: str, every: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _points(page) -> int:
    return int(page.get_attribute("#chart svg", "data-points") or 0)


def _shot(page, name: str, tmp_path: Path) -> None:
    folder = DOCS_IMAGES if os.environ.get("TUNEFORGE_STUDIO_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"studio_{name}.png"), full_page=False)
    assert (folder / f"studio_{name}.png").stat().st_size > 10_000  # a page was drawn, not a blank


def test_a_run_from_the_form_survives_the_studio_and_stops_and_resumes(browser, tmp_path, tiny_model_dir, sft_run):
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.toy_sft_rows(42))
    held_out = tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.toy_sft_rows(7, seed=1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "say hi", "output": "hi"}\n{"instruction": "say bye", "output": }\n'
                   '{"instruction": "", "output": "ok"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    shutil.copytree(sft_run, tmp_path / "runs" / "from-cli")  # a run started from the command line
    studio = Studio(tmp_path, tiny_model_dir)
    studio.start()
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(studio.url)
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#f-name", "first")
        page.fill("#f-model", str(tiny_model_dir))
        # 1. a bad data file, uploaded from the picker into runs/data: its problems and their line numbers, before
        # anything can start
        page.wait_for_function("document.querySelector('#yaml').textContent.includes('/first')")
        page.click("button.browse[data-for='data.train']")
        page.wait_for_selector(f"#picker-list li[data-path='{tmp_path.resolve()}']")  # the allowed folders
        page.click(f"#picker-list li[data-path='{tmp_path.resolve()}']")
        page.wait_for_selector("#picker-list li.data[data-name='train.jsonl']")
        _shot(page, "picker", tmp_path)
        page.set_input_files("#upload-file", str(bad))
        page.click("#upload")
        page.wait_for_selector("#picker", state="hidden")
        assert page.input_value("#f-train") == str((tmp_path / "runs" / "data" / "bad.jsonl").resolve())
        assert (tmp_path / "runs" / "data" / "bad.jsonl").read_bytes() == bad.read_bytes()
        page.wait_for_selector("#data-problems .loc")
        lines = sorted(int(x) for x in page.eval_on_selector_all("#data-problems .loc",
                                                                 "es => es.map(e => e.dataset.line)"))
        assert lines == [2, 3, 4] and "3 error(s)" in page.inner_text("#data-summary")
        page.wait_for_function("document.querySelector('#launch-state').textContent.includes('data errors')")
        assert page.is_disabled("#launch")
        _shot(page, "data_check", tmp_path)
        # 2. the good file, picked (up from runs/data to the allowed folders, into the test's folder), an invalid
        # training key shown at its field, then fixed
        page.click("button.browse[data-for='data.train']")
        page.wait_for_selector("#picker-list li[data-name='bad.jsonl']")  # it opens where the field points
        page.click("#picker-list li[data-name='..']")
        page.wait_for_selector("#picker-list li[data-name='data']")  # runs/
        page.click("#picker-list li[data-name='..']")  # runs/ is a root: up is the list of allowed folders
        page.click(f"#picker-list li[data-path='{tmp_path.resolve()}']")
        page.click("#picker-list li[data-name='train.jsonl']")
        assert page.input_value("#f-train") == str(train.resolve())
        page.fill("#f-data-eval", str(held_out))
        page.wait_for_function("document.querySelector('#data-summary')?.textContent.includes('0 error(s)')")
        page.click("summary:text('training')")
        page.fill("#f-training-batch_size", "0")
        page.wait_for_selector(".err[data-for='training.batch_size']:text('greater than or equal to 1')")
        assert page.is_disabled("#launch")
        for key, value in {"batch_size": "4", "max_steps": "100000", "max_length": "128", "precision": "fp32",
                           "learning_rate": "0.03", "lr_scheduler": "constant", "warmup_ratio": "0",
                           "eval_steps": "10"}.items():
            selector = f"#f-training-{key}"
            if page.eval_on_selector(selector, "e => e.tagName") == "SELECT":
                page.select_option(selector, value)
            else:
                page.fill(selector, value)
        page.click("summary:text('eval')")
        page.fill("#f-eval-generate_samples", "0")
        page.wait_for_function("!document.querySelector('#launch').disabled")
        assert "max_steps: 100000" in page.inner_text("#yaml") and "batch_size: 4" in page.inner_text("#yaml")
        assert page.inner_text("#command").startswith("tuneforge train ")
        page.click("#plan")  # memory per method, as tuneforge plan estimates it
        page.wait_for_selector("table.plan td.fits", timeout=60_000)
        assert page.inner_text("table.plan tr.sel td") == "lora"
        page.set_viewport_size({"width": 1440, "height": 1500})
        page.evaluate("window.scrollTo(0, 0)")
        _shot(page, "new_run", tmp_path)
        page.set_viewport_size({"width": 1440, "height": 1000})
        # 3. start it; the curve gains points
        page.click("#launch")
        page.wait_for_selector("#runs-table tr[data-run='first']")
        _wait(lambda: _points(page) >= 3, 120, "the first logged steps")
        seen = _points(page)
        _wait(lambda: _points(page) > seen, 60, "more steps on the curve")
        # the periodic evals (every 10 steps) join the curve while the run trains, from its eval_log.jsonl
        page.wait_for_selector("#chart svg path[data-series='eval loss']", timeout=60_000)
        assert page.inner_text("#run-status") == "running"
        _shot(page, "run_live", tmp_path)
        # 4. the browser closes, then the studio dies; the run goes on; a new studio shows it live
        state = json.loads((tmp_path / "runs" / ".studio" / "first" / "state.json").read_text())
        log = tmp_path / "runs" / "first" / "train_log.jsonl"
        page.close()
        before = len(log.read_text().splitlines())
        _wait(lambda: len(log.read_text().splitlines()) > before + 2, 60, "steps logged with no browser open")
        studio.kill()
        before = len(log.read_text().splitlines())
        _wait(lambda: len(log.read_text().splitlines()) > before + 2, 60, "steps logged while no studio runs")
        os.kill(state["pid"], 0)  # still there
        studio.start()
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(studio.url + "#runs")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#runs-table tr[data-run='first']")
        page.wait_for_selector("#run-status:text('running')")
        seen = _points(page)
        _wait(lambda: _points(page) > seen, 60, "steps on the curve after the studio restarted")
        # 5. stop: SIGTERM, a complete checkpoint
        page.click("#stop")
        page.wait_for_selector("#run-status:text('stopped')", timeout=60_000)
        checkpoints = sorted((tmp_path / "runs" / "first" / "checkpoints").glob("step-*"))
        assert checkpoints and page.inner_text("#run-checkpoints") == checkpoints[-1].name
        stopped_at = int(checkpoints[-1].name.split("-")[1])
        assert (checkpoints[-1] / "state.json").is_file() and "interrupted (signal 15)" in page.text_content("#run-log")
        # 6. resume to the end (the end moved near, so it comes soon on any machine)
        page.fill("#resume-steps", str(stopped_at + 5))
        page.click("#resume")
        page.wait_for_selector("#run-status:text('finished')", timeout=120_000)
        assert page.inner_text("#run-step") == f"{stopped_at + 5} / {stopped_at + 5}"
        assert (tmp_path / "runs" / "first" / "metrics.json").is_file()
        assert "resumed from" in page.text_content("#run-log")
        page.wait_for_selector("table.metrics")
        page.wait_for_selector("#chart svg path[data-series='eval loss']")  # the periodic evals, from metrics.json
        _shot(page, "finished", tmp_path)
        # 7. compare with the run started from the command line
        page.click("button[data-tab='compare']")
        page.select_option("#cmp-a", "first")
        page.select_option("#cmp-b", "from-cli")
        page.wait_for_selector("#compare-chart svg path[data-series='from-cli']")
        assert page.locator("#compare-chart svg path.line").count() == 2
        assert "eval_after.loss" in page.inner_text("#compare-view table.metrics")
        assert page.locator("table.generations tr").count() == 1 + 7  # from-cli's 7 prompts, side by side
        assert page.locator("pre.report").count() == 2
        page.wait_for_selector("#combine-how option[value='ties']", state="attached")  # merge --combine's types
        _shot(page, "compare", tmp_path)
        # 8. chat with the finished run and its base, side by side
        page.click("button[data-tab='chat']")
        page.wait_for_selector("#chat-run option[value='first']", state="attached")
        page.select_option("#chat-run", "first")
        page.fill("#chat-max", "12")
        page.fill("#chat-input", "what color is the sky ?")
        page.click("#chat-send")
        page.wait_for_selector("#chat-tuned[data-done='1']", timeout=120_000)  # streamed, then done (loads 2 models)
        assert page.get_attribute("#chat-base", "data-done") == "1"
        assert page.locator("#chat-base .msg.assistant").count() == 1
        assert page.inner_text("#chat-tuned .msg.assistant").strip()
        assert page.inner_text("#chat-tuned .msg.user") == "what color is the sky ?"
        _shot(page, "chat", tmp_path)
        # 9. merge a finished LoRA run, verified (tuneforge merge: reloaded, logits within 1e-4). The command-line
        # run: "first" trained a varying number of steps at a high rate, and past ~800 such steps its merged logits
        # have been measured 1.65e-4 from the adapter model's, which tuneforge merge refuses (the page says so)
        page.click("button[data-tab='runs']")
        # the pane re-renders for from-cli; until it has, every button in it (first's merge, export...) is disabled
        assert page.evaluate("""() => {
            document.querySelector("#runs-table tr[data-run='from-cli']").click();
            const buttons = [...document.querySelectorAll('#run-detail button')];
            return buttons.length >= 2 && buttons.every(b => b.disabled); }""")
        page.wait_for_selector("h2:text-is('from-cli')")
        page.wait_for_selector("#merge:not([disabled])")
        page.click("#merge")
        merge_log = tmp_path / "runs" / ".studio" / "from-cli" / "merge.log"
        _wait(lambda: any(w in page.inner_text("#merge-state") for w in ("merged into", "failed")), 300, "the merge")
        assert "merged into" in page.inner_text("#merge-state"), merge_log.read_text()[-3000:]
        report = json.loads((tmp_path / "runs" / "from-cli" / "merged" / "merge.json").read_text())
        decided = report.get("max_abs_logit_diff_fp64") or report["max_abs_logit_diff"]  # fp64 decides if present
        assert decided <= report["atol"] == 1e-4
        shown = page.inner_text("#merge-state").split("max |logit diff| ")[1].split()[0]  # the measured difference
        assert float(shown) == pytest.approx(decided, rel=0.01) and page.is_disabled("#merge")
        assert errors == []
    finally:
        page.close()
        studio.stop()
        state_file = tmp_path / "runs" / ".studio" / "first" / "state.json"
        if state_file.is_file():  # never leave a training process behind
            pid = json.loads(state_file.read_text()).get("pid")
            try:
                os.killpg(pid, signal.SIGKILL) if pid else None
            except (ProcessLookupError, PermissionError):
                pass
