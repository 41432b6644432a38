"""Screenshots of the MLflow UI over a store this tool wrote, in headless Chromium, and the UI's memory.

Starts ``transfer-core ui`` on a free loopback port over the store (or, with ``--server mlflow-ui``,
the plain ``mlflow ui --workers 1`` that ``make ui`` ran before it), drives Debian's ``chromium``
through the DevTools protocol (a small stdlib websocket client: no Selenium, no Playwright), and
writes PNGs plus ``ui_checks.json`` (what each page showed, measured from the DOM, and the resident
memory of the server's process tree, idle and after the pages):

    python benchmarks/ui_screenshots.py                          # the store `make run` wrote
    python benchmarks/ui_screenshots.py --tracking-uri sqlite:////tmp/x/mlruns/mlflow.db --out /tmp/shots
    python benchmarks/ui_screenshots.py --server mlflow-ui       # the UI as `make ui` served it before

Nothing is seeded: the browser has a new, empty profile, so each page is what a newcomer's first
visit shows. Pages, in this order (one browser, so what the first page stores, the later ones see):
  bare_address.png        http://127.0.0.1:PORT typed by hand: which mode, which page, what it stored
  <label>.png             every link the server's start printed (runs, every model, accuracy vs k,
                          analysis report, its figure, registered model)
  report_after_link.png   the report after clicking one of its links (does the report stay?)
  subset_run.png          one sweep model's run page
  registry.png            the Model registry's list, opened without workflowType (does the mode hold?)

Needs ``apt-get install -y chromium``. Runs as root with --no-sandbox.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1500,1000"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            NO_PROXY.open(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


class DevTools:
    """A blocking Chrome DevTools Protocol session over one page's websocket (RFC 6455, text frames)."""

    def __init__(self, ws_url: str):
        url = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv_some()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"DevTools refused the websocket: {head[:200]!r}")
        self.last_id = 0

    def _recv_some(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("DevTools closed the connection")
        return chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv_some()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        header = bytearray([0x81])  # FIN + text frame; client frames are masked
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes(header) + mask + masked)

    def _message(self) -> dict:
        payload = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            data = self._read(n)
            if b0 & 0x0F == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            payload += data
            if b0 & 0x80:
                return json.loads(payload)

    def call(self, method: str, session: str | None = None, **params):
        """Send one command (to an attached target's ``session``) and return its result."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(json.dumps(message))
        while True:
            message = self._message()
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str, session: str | None = None, context: int | None = None):
        extra = {} if context is None else {"contextId": context}
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True,
                           **extra)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll JS ``expression`` until it is truthy (errors while the page loads count as not yet)."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while time.monotonic() < deadline:
            value = self.evaluate(guarded)
            if value:
                return value
            time.sleep(0.5)
        return None

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


class Browser:
    """Headless Chromium with a new profile; ``page`` is a DevTools session on its first tab."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint; is it installed "
                                   "(apt-get install -y chromium)?")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(NO_PROXY.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.page = DevTools(page["webSocketDebuggerUrl"])
        self.page.call("Page.enable")

    def open(self, url: str, ready: str, settle_s: float = 3.0, timeout: float = 90.0):
        """Navigate to ``url``, wait until JS ``ready`` is truthy, then ``settle_s`` more; returns its value."""
        self.page.call("Page.navigate", url="about:blank")
        self.page.call("Page.navigate", url=url)
        value = self.page.wait_for(ready, timeout)
        time.sleep(settle_s)
        return value

    def frame_evaluate(self, url_prefix: str, expression: str):
        """Evaluate JS in the first iframe whose URL starts with ``url_prefix`` (in or out of process)."""
        for target in self.page.call("Target.getTargets")["targetInfos"]:  # an out-of-process iframe
            if target["type"] == "iframe" and target["url"].startswith(url_prefix):
                session = self.page.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
                return self.page.evaluate(expression, session=session["sessionId"])
        frames = [self.page.call("Page.getFrameTree")["frameTree"]]
        while frames:  # an iframe in the page's own process
            frame = frames.pop()
            frames += frame.get("childFrames", [])
            if frame["frame"]["url"].startswith(url_prefix):
                world = self.page.call("Page.createIsolatedWorld", frameId=frame["frame"]["id"], worldName="check")
                return self.page.evaluate(expression, context=world["executionContextId"])
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


SERVERS = ("transfer-core", "mlflow-ui")


def start_ui(server: str, tracking_uri: str, artifact_root: str | None, port: int, experiment: str,
             log: Path) -> subprocess.Popen:
    """Start the UI in a session of its own, its output in ``log``; returns once /health answers."""
    if server == "transfer-core":  # prints the links, then becomes `mlflow server --app-name transfer-core`
        command = [sys.executable, "-m", "transfer_core.cli", "ui", "--tracking-uri", tracking_uri, "--port",
                   str(port), "--experiment", experiment, "--workers", "1"]
    else:  # what `make ui` ran before `transfer-core ui`: MLflow's own app, its job runner on
        command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1"]
        if artifact_root:
            command += ["--default-artifact-root", artifact_root]
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc)
    except Exception:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and the processes it started (all in the session ``start_ui`` gave it)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def printed_links(log: Path) -> dict[str, str]:
    """label -> link of the lines ``  label:   http://...`` that ``transfer-core ui`` printed (first study)."""
    links = {}
    for line in log.read_text().splitlines():
        if line.endswith(":") and not line.startswith(" ") and links:
            break  # the next study's block
        label, _, rest = line.strip().partition(": ")
        if line.startswith("  ") and rest.strip().startswith("http"):
            links[label] = rest.strip()
    return links


def tree_memory(pid: int) -> dict:
    """Memory of ``pid`` and all its descendants, from /proc: resident (RSS; pages shared between them
    counted in each) and proportional (PSS; shared pages split between their users), in MiB, and each process."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    processes = []
    for member in tree:
        try:
            status = Path(f"/proc/{member}/status").read_text()
            command = Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
            pss_kib = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pss_kib = 0
        processes.append({"pid": member, "rss_mib": round(rss_kib / 1024, 1), "pss_mib": round(pss_kib / 1024, 1),
                          "command": command[:160]})
    return {"processes": len(processes), "rss_mib": round(sum(p["rss_mib"] for p in processes), 1),
            "pss_mib": round(sum(p["pss_mib"] for p in processes), 1), "each": processes}


TEXT = "document.body.innerText"
# The mode as drawn: the GenAI sidebar lists judges and has no Model registry entry (the bundle hides it there).
MODE = (f"(({TEXT}.includes('Judges') || ![...document.querySelectorAll('a')].some(a => a.innerText.trim() === "
        "'Model registry')) ? 'GenAI' : 'Model training')")
# The mode by the bundle's own rule: the link's workflowType, else the stored toggle, else genai.
STORED = "window.localStorage.getItem('mlflow.workflowType_v1')"
RULE = (f"(new URLSearchParams(location.hash.split('?')[1] || '').get('workflowType') || JSON.parse({STORED}) "
        "|| 'genai')")
DRAWN = "(document.querySelector('#root') && document.querySelector('#root').innerText.length > 100)"
# The runs table's rows (ag-grid splits a row into pinned and centre parts: joined by row index).
ROWS = ("Object.values([...document.querySelectorAll('.ag-row')].reduce((m, r) => {"
        "const i = r.getAttribute('row-index'); m[i] = (m[i] || '') + ' ' + r.innerText; return m; }, {}))")
# What each row shows of its run name: the text of its name cell as drawn (cut at the column width).
NAMES = ("[...document.querySelectorAll('.ag-row a')].filter(a => a.closest('.ag-cell'))"
         ".map(a => { const cell = a.closest('.ag-cell'); const w = cell.getBoundingClientRect().width;"
         " const r = document.createRange(); r.selectNodeContents(a); const full = a.innerText;"
         " return a.scrollWidth > cell.clientWidth ? full.slice(0, Math.floor(full.length * w / a.scrollWidth))"
         " : full; })")
HEADERS = "[...document.querySelectorAll('.ag-header-cell')].map(h => h.innerText.trim()).filter(Boolean)"


def take(browser: Browser, out: Path, name: str, url: str, ready: str, check: str, settle_s: float = 4.0) -> dict:
    """Open ``url`` as a link is followed (nothing seeded), wait for ``ready``, screenshot, return ``check``."""
    started = time.monotonic()
    found = browser.open(url, ready, settle_s=settle_s)
    result = {"url": url, "ready": bool(found), "ready_s": round(time.monotonic() - started, 1),
              **(browser.page.evaluate(check) or {})}
    browser.page.screenshot(out / f"{name}.png")
    print(f"{name}.png: " + ", ".join(f"{k}={v}" for k, v in result.items() if k != "url"))
    return result


def cells(column: str) -> str:
    """JS: the texts drawn in the runs table's column ``column`` (its ag-grid col-id, e.g. params.`k`)."""
    return f"[...document.querySelectorAll('.ag-row [col-id=\"{column}\"]')].map(c => c.innerText.trim())"


def link_checks(label: str, name: str) -> tuple[str, str, float]:
    """(ready, check, settle seconds) for the page a printed link of ``label`` opens."""
    base = f"mode: {MODE}, mode_by_rule: {RULE}"
    if label == "every model":
        return (f"{ROWS}.length > 0",
                f"({{{base}, rows: {ROWS}.length, names_as_drawn: {NAMES}.slice(0, 12), "
                f"distinct_names_as_drawn: new Set({NAMES}).size, names: {NAMES}.length, columns: {HEADERS}, "
                f"group_rows: {ROWS}.filter(r => r.includes('(average)')).length, "
                f"k_as_drawn: {cells('params.`k`')}, kind_as_drawn: {cells('tags.`transfer_core.kind`')}.slice(0, 8), "
                f"accuracy_as_drawn: {cells('metrics.`target_test_acc`')}.slice(0, 8)}})", 4.0)
    if label == "accuracy vs k":
        return ("document.querySelectorAll('.js-plotly-plot').length > 0",
                f"({{{base}, charts: document.querySelectorAll('.js-plotly-plot').length,"
                " points: document.querySelectorAll('.js-plotly-plot .point').length,"
                " says_no_charts: document.body.innerText.includes('No charts')})", 6.0)
    if label == "analysis report":
        frame = "document.querySelector('iframe.mlflow-html-iframe')"
        return f"{frame} && {frame}.src", f"({{{base}}})", 5.0
    if label == "its figure":
        return ("[...document.images].some(i => i.naturalWidth > 300)",
                f"({{{base}, pictures: [...document.images].filter(i => i.naturalWidth > 300)"
                ".map(i => `${i.naturalWidth}x${i.naturalHeight}`)})", 3.0)
    if label == "registered model":
        return (f"{TEXT}.includes('Source Run') || {TEXT}.includes('Source run')",
                f"({{{base}, source_run_links: [...document.querySelectorAll('a')].map(a => a.getAttribute('href')"
                " || '').filter(h => h.includes('/runs/'))})", 4.0)
    return f"{TEXT}.includes({json.dumps(name)})", f"({{{base}}})", 4.0  # runs, and anything new


def main() -> int:
    from mlflow.tracking import MlflowClient

    from transfer_core.registry import CHAMPION, model_name
    from transfer_core.track import latest_run
    from transfer_core.track.runs import SWEEP
    from transfer_core.track.store import ui_url
    from transfer_core.workflow.links import study_links

    parser = argparse.ArgumentParser(description="Screenshots of the MLflow UI over a transfer_core store, as a "
                                                 "newcomer's browser (an empty profile) meets it.")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI")
                        or f"sqlite:///{Path('mlruns/mlflow.db').resolve()}", help="the store to look at")
    parser.add_argument("--artifact-root", default=None, help="default: the folder of a sqlite store")
    parser.add_argument("--experiment", default="transfer_core", help="the experiment the pipeline wrote")
    parser.add_argument("--server", choices=SERVERS, default=SERVERS[0],
                        help="transfer-core: `transfer-core ui`; mlflow-ui: `mlflow ui --workers 1`, as `make ui` "
                             "served it before (its links are the same set, made here)")
    parser.add_argument("--idle-s", type=float, default=30.0,
                        help="seconds after /health answers before the idle memory is read")
    parser.add_argument("--out", default="outputs/ui", help="folder for the PNGs and ui_checks.json")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="the Chromium executable")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        sys.exit("chromium is not installed; apt-get install -y chromium, or pass --chromium PATH")
    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment {args.experiment!r} in {args.tracking_uri}; run `make run` first or pass --experiment")
    exp = experiment.experiment_id
    sweep = latest_run(client, exp, SWEEP)
    root = args.artifact_root
    if root is None and args.tracking_uri.startswith("sqlite:///"):
        root = str(Path(args.tracking_uri[len("sqlite:///"):]).parent)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = out / "server.log"
    started = time.monotonic()
    ui = start_ui(args.server, args.tracking_uri, root, port, args.experiment, log)
    checks = {"server": args.server, "experiment": args.experiment,
              "experiment_kind_tag": experiment.tags.get("mlflow.experimentKind"),
              "load_average": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M"),
              "health_s": round(time.monotonic() - started, 1),
              "browser_profile": "empty (new for this run; nothing written to local storage)"}
    time.sleep(args.idle_s)
    checks["memory_idle"] = tree_memory(ui.pid)
    print(f"server tree, idle: {checks['memory_idle']['processes']} processes, "
          f"RSS {checks['memory_idle']['rss_mib']} MiB, PSS {checks['memory_idle']['pss_mib']} MiB")
    if args.server == "transfer-core":
        links = printed_links(log)
    else:
        links = dict(study_links(client, experiment, base))
    checks["printed_links"] = links
    browser = Browser(args.chromium)
    name = json.dumps(args.experiment)
    try:
        browser.page.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                          mobile=False)
        checks["bare_address"] = take(
            browser, out, "bare_address", base, DRAWN,
            f"({{mode: {MODE}, mode_by_rule: {RULE}, stored: {STORED}, route: location.hash.split('&')[0], "
            f"shows_experiment: {TEXT}.includes({name})}})", settle_s=5)
        for label, link in links.items():
            ready, check, settle = link_checks(label, args.experiment)
            file = label.replace(" ", "_")
            checks[file] = take(browser, out, file, link, ready, check, settle_s=settle)
            if label == "analysis report":
                checks[file].update(browser.frame_evaluate("blob:", (
                    "(() => { const before = document.querySelectorAll('section').length;"
                    " const links = [...document.querySelectorAll('a[href]')];"
                    " const inPage = links.filter(a => a.getAttribute('href').startsWith('#'));"
                    " const other = links.length - inPage.length;"
                    " if (inPage.length) inPage[inPage.length - 1].click();"
                    " return {sections: before, pictures: document.images.length, in_page_links: inPage.length,"
                    " links_that_would_leave: other, artifact_paths_as_text: document.querySelectorAll('code').length,"
                    " scrolled_to: Math.round(window.scrollY)}; })()")) or {})
                time.sleep(1)
                after = browser.frame_evaluate("blob:", "({sections: document.querySelectorAll('section').length,"
                                                        " url: location.protocol})") or {}
                checks[file]["after_clicking_a_link"] = after
                browser.page.screenshot(out / "report_after_link.png")
                print("report after a link:", checks[file])
            if label == "registered model":
                version = client.get_model_version_by_alias(model_name(args.experiment), CHAMPION)
                checks[file]["trained_by"] = version.run_id
                checks[file]["source_run_is_the_training_run"] = any(
                    version.run_id in h for h in checks[file]["source_run_links"])
        if sweep is not None:
            model = client.search_runs([exp], f"tags.sweep_id = '{sweep.data.tags['sweep_id']}' "
                                              "and tags.`transfer_core.kind` = 'subset_run'", max_results=1)[0]
            run_name = json.dumps(model.info.run_name)
            checks["subset_run"] = take(browser, out, "subset_run", ui_url(exp, model.info.run_id, base=base),
                                        f"{TEXT}.includes('target_test_acc') || {TEXT}.includes('Metrics')",
                                        f"({{mode: {MODE}, shows_name: {TEXT}.includes({run_name})}})")
        registered = json.dumps(model_name(args.experiment))
        checks["registry"] = take(browser, out, "registry", f"{base}/#/models", f"{TEXT}.includes({registered})",
                                  f"({{mode: {MODE}, mode_by_rule: {RULE}, stored: {STORED}}})")
        checks["memory_after_pages"] = tree_memory(ui.pid)
        print(f"server tree, after the pages: {checks['memory_after_pages']['processes']} processes, "
              f"RSS {checks['memory_after_pages']['rss_mib']} MiB, PSS {checks['memory_after_pages']['pss_mib']} MiB")
    finally:
        browser.close()
        stop(ui)
    (out / "ui_checks.json").write_text(json.dumps(checks, indent=1))
    print(f"wrote {out}/*.png and {out}/ui_checks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
