"""The rendered book, opened in a real browser with the network cut off.

`make book` writes _build/html (`make test` builds its own copy in _build/test/html and points
RESNET_BOOK_HTML at it); this test serves it from localhost and opens its pages in headless
Chromium (Debian's `chromium`; `make browser` installs it) while every other host is blocked twice
over: by Chromium's host resolver (every name but localhost resolves to nothing) and by intercepting
each request and failing any that is not for the local server. On every page of the table of contents:

- every image loads (naturalWidth > 0) and no request to the local server fails;
- the page asks for nothing outside the book (no CDN: the book must work offline);
- math is typeset by the book's own copy of MathJax: every math element holds MathJax output,
  none is a TeX error, and no raw `$$`, `\\(`, `\\[` or `$...$` is left in the text.

The browser is driven over the Chrome DevTools Protocol through a pipe (`--remote-debugging-pipe`),
so no driver package is needed. If the book has not been built, the tests fail and say to run
`make book`; if Chromium is missing, they say to run `make browser`.

The last tests need neither: they check the build itself (scripts/build_book.py and _config.yml):
no hidden folder a test run leaves is read as a page, and the execution cache survives a second
build unless the code or the data changed.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from scripts import build_book

ROOT = Path(__file__).resolve().parents[1]
# The built book under test: RESNET_BOOK_HTML (what `make test` sets: its own build), else `make book`'s.
HTML_DIR = Path(os.environ.get("RESNET_BOOK_HTML") or build_book.HTML_DIR).resolve()
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PAGE_TIMEOUT_S = 90  # generous: the machine may be busy executing notebooks beside this test

# Pages that must show math and a figure (the others are checked for whatever they contain).
REQUIRES = {
    "index.html": {"math"},
    "book/00_preface.html": {"math", "figure"},
    "book/02_residual_block.html": {"math", "figure"},
}


def toc_pages() -> list[str]:
    """index.html, then the HTML page of every other entry of _toc.yml (the root is index.html's target)."""
    return ["index.html"] + [str(Path(entry).with_suffix(".html")) for entry in build_book.toc_entries()[1:]]


PAGES = toc_pages()


def require_built_book() -> None:
    if not (HTML_DIR / "index.html").exists():
        pytest.fail(f"The book has not been built: {HTML_DIR / 'index.html'} is missing. Run `make book` first.")


# ----------------------------------------------------------------------------- browser


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: replies out)."""

    FLAGS = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        # Every host name but the local server's resolves to nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--window-size=1280,900",
        "--remote-debugging-pipe",
    ]

    def __init__(self, executable: str = CHROMIUM):
        self.profile = tempfile.TemporaryDirectory(prefix="book-test-chromium-")
        self.log = open(Path(self.profile.name) / "chromium.log", "w+b")  # noqa: SIM115 (closed in close())
        to_browser_r, self._out = os.pipe()
        self._in, from_browser_w = os.pipe()
        # Move the browser's ends above fd 4 so that the dup2 calls below cannot overwrite them.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def give_browser_the_pipe():  # in the child, before exec: the protocol's fixed descriptors
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        profile_dir = Path(self.profile.name) / "profile"
        self.process = subprocess.Popen(
            [executable, *self.FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            preexec_fn=give_browser_the_pipe,
            close_fds=False,  # our own descriptors are close-on-exec anyway; 3 and 4 must survive
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self._handlers = []  # called with every event

    def close(self) -> None:
        try:
            self.send("Browser.close", wait=False)
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 (a dead or stuck browser is killed below)
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for fd in (self._in, self._out):
            os.close(fd)
        self.log.close()
        self.profile.cleanup()

    def log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from Chromium in time")
            ready, _, _ = select.select([self._in], [], [], remaining)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe. Its log ends with:\n{self.log_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, wait: bool = True, timeout: float = 30):
        self._next_id += 1
        message_id = self._next_id  # event handlers may send commands of their own while we wait
        message = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == message_id and "method" not in reply:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                for handler in list(self._handlers):
                    handler(reply)
            # replies to commands sent with wait=False are dropped

    def open_page(self, url: str, allowed_origin: str, timeout: float = PAGE_TIMEOUT_S) -> dict:
        """Load `url` in a new tab, follow a meta refresh, wait for MathJax and images; return a report."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        requests, failed, blocked, errors = {}, [], [], []

        def on_event(event):
            if event.get("sessionId") != session:
                return
            method, params = event["method"], event.get("params", {})
            if method == "Fetch.requestPaused":  # every request stops here until we allow or fail it
                request_url = params["request"]["url"]
                if request_url.startswith(allowed_origin + "/"):
                    self.send("Fetch.continueRequest", {"requestId": params["requestId"]}, session, wait=False)
                else:
                    blocked.append(request_url)
                    self.send(
                        "Fetch.failRequest",
                        {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                        session,
                        wait=False,
                    )
            elif method == "Network.requestWillBeSent":
                requests[params["requestId"]] = params["request"]["url"]
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                if urlsplit(params["response"]["url"]).path == "/favicon.ico":
                    return  # the browser asks for it by itself; the book has no favicon
                failed.append(f"{params['response']['url']} (HTTP {params['response']['status']})")
            elif method == "Network.loadingFailed":
                request_url = requests.get(params["requestId"], "?")
                if request_url.startswith(allowed_origin + "/"):
                    failed.append(f"{request_url} ({params.get('errorText')})")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text"))

        self._handlers.append(on_event)
        try:
            for domain in ("Page.enable", "Network.enable", "Runtime.enable"):
                self.send(domain, session=session)
            self.send("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session)
            self.send("Page.navigate", {"url": url}, session)
            deadline = time.monotonic() + timeout
            report = None
            while time.monotonic() < deadline:
                try:
                    result = self.send(
                        "Runtime.evaluate",
                        {"expression": INSPECT_PAGE_JS, "awaitPromise": True, "returnByValue": True},
                        session,
                        timeout=max(1.0, deadline - time.monotonic()),
                    )
                except RuntimeError as err:  # the page navigated (meta refresh) while we looked
                    if "context" not in str(err).lower() and "navigated" not in str(err).lower():
                        raise
                    time.sleep(0.2)
                    continue
                if "exceptionDetails" in result:
                    raise RuntimeError(f"inspecting {url} failed: {result['exceptionDetails']}")
                report = result["result"]["value"]
                if report.get("redirecting") or report.get("url", "").startswith("about:"):  # not there yet
                    time.sleep(0.2)
                    continue
                break
            if report is None or report.get("redirecting") or report.get("url", "").startswith("about:"):
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            # Late failures (fonts requested by MathJax) arrive as events: drain them briefly.
            self.send("Runtime.evaluate", {"expression": "new Promise(r => setTimeout(r, 300))", "awaitPromise": True}, session)
            report.update(failed_requests=failed, blocked_requests=blocked, script_errors=[e for e in errors if e])
            return report
        finally:
            self._handlers.remove(on_event)
            self.send("Target.closeTarget", {"targetId": target})


# Runs inside the page: waits for the page, MathJax, fonts and images, then describes what it shows.
INSPECT_PAGE_JS = r"""
(async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const deadline = Date.now() + 60000;
  while (document.readyState !== "complete" && Date.now() < deadline) await sleep(50);
  if (document.querySelector('meta[http-equiv="Refresh" i], meta[http-equiv="refresh"]')) {
    return { redirecting: true, url: location.href };
  }
  // Deferred scripts have run once the page is complete: MathJax 3 has defined its startup by now.
  const mathElements = [...document.querySelectorAll("span.math, div.math")];
  let mathjax = "no math on this page";
  const started = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
  if (started) {
    try {
      await Promise.race([window.MathJax.startup.promise, sleep(deadline - Date.now()).then(() => { throw new Error("timed out"); })]);
      mathjax = "typeset by MathJax " + window.MathJax.version;
    } catch (error) {
      mathjax = "MathJax failed: " + error;
    }
  } else if (mathElements.length) {
    mathjax = "MathJax did not load";
  }
  for (const img of document.images) if (img.loading === "lazy") img.loading = "eager";
  await Promise.race([
    Promise.all([...document.images].map((img) => img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; }))),
    sleep(Math.max(0, deadline - Date.now())),
  ]);
  if (document.fonts) await Promise.race([document.fonts.ready, sleep(5000)]);

  // The page's own content: the theme's article, without the header buttons (their icons are images too).
  const main = document.querySelector("article") || document.querySelector("main") || document.body;
  const skip = new Set(["SCRIPT", "STYLE", "PRE", "CODE", "TEXTAREA", "MJX-CONTAINER", "MJX-ASSISTIVE-MML", "KBD", "SAMP"]);
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el && el !== main.parentElement; el = el.parentElement) {
        if (skip.has(el.tagName) || el.classList.contains("highlight")) return NodeFilter.FILTER_REJECT;
      }
      return NodeFilter.FILTER_ACCEPT;
    },
  });
  const rawTex = [];
  const rawPattern = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|(^|[^\\$\w])\$[^$\s][^$\n]{0,200}?[^\s\\$]\$(?![\w$])/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const match = node.textContent.match(rawPattern);
    if (match) {
      const at = node.textContent.indexOf(match[0]);
      rawTex.push(node.textContent.slice(Math.max(0, at - 30), at + 50).replace(/\s+/g, " "));
    }
  }
  const images = [...document.images].map((img) => ({
    src: img.currentSrc || img.src,
    complete: img.complete,
    naturalWidth: img.naturalWidth,
    inContent: main.contains(img),
  }));
  // What is wider than the column: a code block, an output or a table that scrolls or spills
  // sideways at this window width (1280 px) hides part of itself from a reader.
  const wide = [];
  const column = main.getBoundingClientRect();
  for (const el of main.querySelectorAll("pre, table, .cell_output, .output, img, svg, mjx-container[display='true']")) {
    if (el.closest(".toggle-hidden, details:not([open]), .dropdown:not(.toggle-shown)")) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0) continue;  // folded (a hidden cell or dropdown)
    // A display equation's container is as wide as the column; its content is what must fit.
    const scrolls = el.tagName === "MJX-CONTAINER"
      ? el.scrollWidth > column.width + 2
      : el.scrollWidth > el.clientWidth + 2 && el.clientWidth > 0;
    const spills = box.right > column.right + 2;
    if (scrolls || spills) {
      const text = (el.textContent || el.getAttribute("src") || el.tagName).trim().replace(/\s+/g, " ");
      wide.push(`${el.tagName.toLowerCase()} ${Math.max(el.scrollWidth, Math.round(box.width))} px ` +
                `in a ${Math.round(column.width)} px column: ${text.slice(0, 60)}`);
    }
  }
  const outputText = [...main.querySelectorAll(".cell_output")].map((el) => el.textContent).join("\n");
  return {
    url: location.href,
    title: document.title,
    wide,
    outputText,
    mathjax,
    mathElements: mathElements.length,
    mathWithoutOutput: mathElements.filter((el) => !el.querySelector("mjx-container")).map((el) => el.textContent.slice(0, 80)),
    mjxContainers: document.querySelectorAll("mjx-container").length,
    texErrors: [...document.querySelectorAll("mjx-merror")].map((el) => el.getAttribute("data-mjx-error") || el.textContent),
    rawTex,
    images,
  };
})()
"""


# Printed by a cell but meant for no reader: a path on the build machine, a Python repr of axes or
# arrays of objects, torchinfo's unit enum, a raw JSON record.
LEAKED_OUTPUT = re.compile(
    r"(?:/home/|/work/|/tmp/|/root/|/content/|site-packages)\S*|array\(\[<Axes|<Axes: |Units\.[A-Z]+|"
    r"\{\s*\"(?:command|commit|fingerprint)\"\s*:"
)


def page_problems(report: dict, requires: set[str] = frozenset()) -> list[str]:
    """Everything wrong with a page's report (empty: the page renders offline as it should)."""
    problems = []
    if report["blocked_requests"]:
        problems.append(f"the page requests resources from outside the book (a CDN?): {report['blocked_requests']}")
    if report["failed_requests"]:
        problems.append(f"requests to the book's own server failed: {report['failed_requests']}")
    broken = [img["src"] for img in report["images"] if not img["complete"] or img["naturalWidth"] == 0]
    if broken:
        problems.append(f"images that did not load: {broken}")
    if report["mathElements"] and not report["mathjax"].startswith("typeset"):
        problems.append(f"{report['mathElements']} math element(s) but {report['mathjax']}")
    if report["mathWithoutOutput"]:
        problems.append(f"math left untypeset: {report['mathWithoutOutput'][:5]}")
    if report["texErrors"]:
        problems.append(f"MathJax reports TeX errors: {report['texErrors'][:5]}")
    if report["rawTex"]:
        problems.append(f"raw TeX in the text (math that was never recognised as math): {report['rawTex'][:5]}")
    if report["wide"]:
        problems.append(f"wider than the column at 1280 px (clipped or scrolled): {report['wide'][:5]}")
    leaked = sorted({m.group(0) for m in LEAKED_OUTPUT.finditer(report["outputText"])})
    if leaked:
        problems.append(f"outputs print what a reader should not see (machine paths, reprs, units): {leaked[:5]}")
    if "math" in requires and (report["mathElements"] == 0 or report["mjxContainers"] == 0):
        problems.append("this page should show typeset math, but has none")
    if "figure" in requires and not any(img["inContent"] and img["naturalWidth"] > 0 for img in report["images"]):
        problems.append("this page should show a figure, but no image in its content loaded")
    return problems


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


class LocalSite:
    """Serves a folder on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium was not found at {CHROMIUM}: run `make browser` (Debian's `chromium` package).")
    chromium = Browser()  # started before any server thread exists (it forks)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def book_site(browser):
    require_built_book()
    site = LocalSite(HTML_DIR)
    yield site
    site.close()


# ----------------------------------------------------------------------------- tests


def test_book_is_built():
    require_built_book()
    missing = [page for page in PAGES if not (HTML_DIR / page).exists()]
    assert not missing, f"pages of _toc.yml missing from {HTML_DIR}: {missing}. Run `make book`."
    assert (HTML_DIR / "_static" / "mathjax" / "tex-chtml.js").exists(), (
        "the book has no local copy of MathJax (_static/mathjax/tex-chtml.js): is sphinx-mathjax-offline "
        "installed and listed in _config.yml's sphinx.extra_extensions? Rebuild with `make book`."
    )


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(page, browser, book_site):
    if not (HTML_DIR / page).exists():
        pytest.fail(f"{HTML_DIR / page} is missing: run `make book`.")
    report = browser.open_page(f"{book_site.origin}/{page}", book_site.origin)
    problems = page_problems(report, REQUIRES.get(page, set()))
    assert not problems, f"{page} ({report['url']}):\n- " + "\n- ".join(problems)


NOTEBOOK_PAGES = [page for page in PAGES[1:] if (ROOT / page).with_suffix(".ipynb").exists()]


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_chapter_has_colab_launch_button(page):
    """Every notebook page links to itself in Colab, on the repository and branch of _config.yml.

    (Markdown pages have no launch button: Colab cannot open them.)
    """
    require_built_book()
    if not (HTML_DIR / page).exists():
        pytest.fail(f"{HTML_DIR / page} is missing: run `make book`.")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = urlsplit(config["repository"]["url"]).path.strip("/")
    expected = f"https://colab.research.google.com/github/{repo}/blob/{config['repository']['branch']}/{Path(page).with_suffix('.ipynb')}"
    html = (HTML_DIR / page).read_text(encoding="utf-8")
    assert expected in html, f"{page} has no Colab launch button linking to {expected}"


# The checks above must be able to fail: a page that loads MathJax from a CDN, has a broken image and
# raw TeX is served from a scratch folder and must be rejected for each of these reasons.
BROKEN_PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>broken</title>
<script>window.MathJax = {options: {processHtmlClass: "math"}};</script>
<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>
</head><body><main>
<p>Inline <span class="math notranslate nohighlight">\(x^2\)</span> and a forgotten $y = F(x) + x$ here.</p>
<img src="missing.png" alt="a figure that is not there">
<div style="width: 600px"><pre style="overflow-x: auto">model = build(""" + "x" * 150 + """)</pre>
<div class="cell_output"><pre>data: /work/main/.data | Total mult-adds (Units.GIGABYTES): 0.56</pre></div></div>
</main></body></html>
"""

WORKING_PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>working</title>
<script>window.MathJax = {options: {processHtmlClass: "math"}};</script>
<script defer src="_static/mathjax/tex-chtml.js"></script>
</head><body><main>
<p>Inline <span class="math notranslate nohighlight">\(x^2\)</span>.</p>
<div class="math notranslate nohighlight">\[\mathbf{y} = \mathcal{F}(\mathbf{x}) + \mathbf{x}\]</div>
<img src="dot.png" alt="a figure">
</main></body></html>
"""


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A small grey PNG, built with the standard library only."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))  # filter byte, then grey pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_checks_reject_a_page_that_needs_the_network(browser, tmp_path):
    (tmp_path / "broken.html").write_text(BROKEN_PAGE, encoding="utf-8")
    site = LocalSite(tmp_path)
    try:
        report = browser.open_page(f"{site.origin}/broken.html", site.origin)
    finally:
        site.close()
    problems = "\n".join(page_problems(report, {"math", "figure"}))
    assert "cdn.jsdelivr.net" in problems, f"the CDN request was not reported:\n{problems}"
    assert "MathJax did not load" in problems, f"missing MathJax was not reported:\n{problems}"
    assert "missing.png" in problems, f"the broken image was not reported:\n{problems}"
    assert "forgotten $y" in problems, f"raw $...$ math was not reported:\n{problems}"
    assert "wider than the column" in problems and "model = build(" in problems, f"overflow not reported:\n{problems}"
    assert "/work/main/.data" in problems and "Units.GIGABYTES" in problems, f"leaked output not reported:\n{problems}"


def test_checks_accept_a_page_with_local_mathjax(browser, tmp_path):
    """The positive control: the same checks pass on a small page using the book's MathJax copy."""
    require_built_book()
    shutil.copytree(HTML_DIR / "_static" / "mathjax", tmp_path / "_static" / "mathjax")
    (tmp_path / "working.html").write_text(WORKING_PAGE, encoding="utf-8")
    (tmp_path / "dot.png").write_bytes(tiny_png())
    site = LocalSite(tmp_path)
    try:
        report = browser.open_page(f"{site.origin}/working.html", site.origin)
    finally:
        site.close()
    assert not page_problems(report, {"math", "figure"}), page_problems(report, {"math", "figure"})
    assert report["mathElements"] == 2 and report["mjxContainers"] >= 2, report


# ----------------------------------------------------------------------------- the build (no browser, no built book)


def test_no_hidden_folder_is_read_as_a_page(tmp_path):
    """only_build_toc_files leaves out every page _toc.yml does not list, except in hidden folders:
    sphinx-external-toc's glob does not see them, Sphinx's reader does. _config.yml's exclude_patterns
    must cover those: a fresh clone's `make test` leaves .pytest_cache/README.md, which the next build
    read as a page (and failed on, warnings being errors)."""
    from sphinx.util.matching import get_matching_files

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["only_build_toc_files"] is True, "without it, every Markdown file of the checkout is a page"
    pages = {f"{entry}.md" for entry in build_book.toc_entries()}
    hidden = {
        ".pytest_cache/README.md", ".mypy_cache/README.md", ".ruff_cache/README.md", "book/.pytest_cache/README.md",
        "book/.ipynb_checkpoints/01_degradation-checkpoint.ipynb", "utils/.hypothesis/notes.md", ".venv/README.md",
        ".github/PULL_REQUEST_TEMPLATE.md", ".data/cifar10/README.md", "book/.notes.md",
    }  # fmt: skip
    # Every hidden folder of this checkout too, whatever made it.
    hidden |= {f"{p.name}/README.md" for p in ROOT.iterdir() if p.is_dir() and p.name.startswith(".")}
    for name in pages | hidden:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("# a page\n")
    read = set(get_matching_files(tmp_path, include_patterns=["**.md", "**.ipynb"], exclude_patterns=config["exclude_patterns"]))
    assert read - pages == set(), f"Sphinx would read these as pages; add them to _config.yml's exclude_patterns: {sorted(read - pages)}"
    assert read == pages


@pytest.fixture
def scratch_repo(tmp_path, monkeypatch):
    """A checkout with one file of every kind the fingerprint reads, and a data folder with both archives."""
    repo, data_dir = tmp_path / "repo", tmp_path / "data"
    for name, text in {"utils/data.py": "X = 1\n", "pyproject.toml": "[project]\n", "requirements.txt": "torch\n",
                       "results/latency-cpu.json": "{}\n", "_toc.yml": "root: book/intro\n"}.items():  # fmt: skip
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    data_dir.mkdir()
    monkeypatch.setattr(build_book, "ROOT", repo)
    monkeypatch.setattr(build_book, "CACHE_ROOT", repo / "_build" / ".jupyter_cache")
    monkeypatch.setenv("RESNET_DATA", str(data_dir))
    return repo, data_dir


def _leave_what_a_build_and_a_test_run_leave(repo, data_dir):
    if (data_dir / "cifar10.tgz").exists():  # decoded by the first notebook that loads CIFAR-10
        (data_dir / "cifar10-uint8.npz").write_bytes(b"decoded")
    (data_dir / ".cifar10.lock").touch()
    (data_dir / "MNIST" / "raw").mkdir(parents=True)  # a failed MNIST download leaves this, empty
    (repo / ".pytest_cache" / "v").mkdir(parents=True)
    (repo / ".pytest_cache" / "README.md").write_text("# pytest cache directory\n")
    (repo / "utils" / "__pycache__").mkdir()
    (repo / "utils" / "__pycache__" / "data.cpython-311.pyc").write_bytes(b"\x00compiled")
    (repo / "book" / "checkpoints").mkdir(parents=True)


@pytest.mark.parametrize("archives", [("cifar10.tgz", "mnist.tgz"), ()], ids=["with-copies", "no-copies"])
def test_the_fingerprint_ignores_what_runs_leave_and_follows_the_code_and_the_data(scratch_repo, archives):
    repo, data_dir = scratch_repo
    for name in archives:
        (data_dir / name).write_bytes(b"an archive")
    first = build_book.fingerprint("quick")
    _leave_what_a_build_and_a_test_run_leave(repo, data_dir)
    if archives:  # extracted by the first build's notebooks
        for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (data_dir / "MNIST" / "raw" / name).write_bytes(b"idx")
    assert build_book.fingerprint("quick") == first, "a second build would re-execute every notebook"
    assert build_book.fingerprint("full") != first
    (data_dir / ("cifar10.tgz" if not archives else "extra")).write_bytes(b"x")
    assert (build_book.fingerprint("quick") != first) == (not archives), "a new copy of CIFAR-10 changes what runs"
    (repo / "utils" / "data.py").write_text("X = 2\n")
    assert build_book.fingerprint("quick") != first, "a change to utils/ must re-execute the notebooks"


def test_a_second_build_keeps_the_execution_cache_until_the_code_changes(scratch_repo, capsys):
    repo, data_dir = scratch_repo
    (data_dir / "cifar10.tgz").write_bytes(b"an archive")
    cache_dir = build_book.prepare_cache("quick", force=False)
    (cache_dir / "executed-notebook").write_text("outputs")
    _leave_what_a_build_and_a_test_run_leave(repo, data_dir)
    assert build_book.prepare_cache("quick", force=False) == cache_dir
    assert (cache_dir / "executed-notebook").exists() and "Emptying" not in capsys.readouterr().out
    (repo / "utils" / "data.py").write_text("X = 2\n")
    build_book.prepare_cache("quick", force=False)
    assert not (cache_dir / "executed-notebook").exists() and "Emptying the quick execution cache" in capsys.readouterr().out
    assert not list(cache_dir.parent.glob(".*.tmp")), "the stamp is written atomically"


# ----------------------------------------------------------------------------- the two editions


def _toy_book(tmp_path: Path) -> tuple[Path, Path]:
    """A one-chapter book: the grader's toy chapter with an answer key added (its source folder, notebook)."""
    import nbformat

    from scripts import notebook_tags

    source = tmp_path / "src"
    (source / "book").mkdir(parents=True)
    nb = notebook_tags.read_notebook(ROOT / "tests" / "fixtures" / "grading" / "book" / "01_toy.ipynb")
    key = nbformat.v4.new_markdown_cell(
        ":::{admonition} Answer key (instructors)\n:class: dropdown\n"
        "The identity is learned by driving the residual branch to zero, which plain layers cannot do easily.\n:::"
    )
    key.metadata["tags"] = [notebook_tags.ANSWER_KEY_TAG]
    nb.cells.append(key)
    chapter = source / "book" / "01_toy.ipynb"
    nbformat.write(nb, str(chapter))
    (source / "intro.md").write_text("# A toy book\n\nOne chapter.\n", encoding="utf-8")
    (source / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: book/01_toy\n", encoding="utf-8")
    return source, chapter


def _build_toy(source: Path, edition: str) -> Path:
    """The toy book built in one edition with the course's own edition settings; its HTML folder."""
    real = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    config = {
        "title": "toy", "only_build_toc_files": True, "execute": {"execute_notebooks": "off"},
        "sphinx": {
            "local_extensions": {name: str(ROOT) for name in real["sphinx"]["local_extensions"]},
            "config": {"course_edition": edition},
        },
    }  # fmt: skip
    (source / "_config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = source.parent / f"out-{edition}"
    result = subprocess.run(
        [*build_book.jupyter_book_command(), "build", str(source), "--path-output", str(out), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"the toy book ({edition}) did not build:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out / "_build" / "html"


def test_the_public_edition_leaves_out_solutions_and_answer_keys_and_the_instructor_edition_keeps_them(tmp_path):
    import nbformat

    from scripts import book_edition, notebook_tags

    source, chapter = _toy_book(tmp_path)
    nb = notebook_tags.read_notebook(chapter)
    secrets = book_edition.secret_passages(nb)
    assert {what for what, _ in secrets} == {"solution", "answer key"}, secrets
    pages = {edition: (_build_toy(source, edition) / "book" / "01_toy.html").read_text(encoding="utf-8")
             for edition in ("instructor", "public")}  # fmt: skip
    # The instructor edition shows every secret passage: the check below can fail.
    assert sorted(book_edition.leaks(nb, pages["instructor"])) == sorted(secrets)
    assert book_edition.leaks(nb, pages["public"]) == [], "the public page shows a solution or an answer key"
    text = book_edition.page_text(pages["public"])
    assert "relu must come after the addition" in text, "the check cells stay in the public edition"
    assert "Exercise 1.1" in text and "Why does the shortcut make the identity easy" in text, "so do the tasks"
    for edition, page in pages.items():
        assert f'<meta name="course-edition" content="{edition}">' in page
    # The public page's downloadable notebook is the student copy; the instructor's is the chapter.
    public_source = next((tmp_path / "out-public" / "_build" / "html" / "_sources" / "book").glob("01_toy.ipynb*"))
    copy = nbformat.read(str(public_source), as_version=4)
    assert copy.metadata[notebook_tags.METADATA_KEY]["copy"] == "exercises"
    assert book_edition.leaks(nb, json.dumps(copy)) == []
    instructor_source = next((tmp_path / "out-instructor" / "_build" / "html" / "_sources" / "book").glob("01_toy.ipynb*"))
    assert notebook_tags.METADATA_KEY not in nbformat.read(str(instructor_source), as_version=4).metadata


def test_an_unknown_edition_or_a_code_answer_key_is_refused():
    import nbformat

    from scripts import book_edition

    with pytest.raises(book_edition.EditionError, match=r"course_edition is 'teacher'; expected one of 'public', 'instructor'"):
        book_edition.check_edition("teacher")
    cell = nbformat.v4.new_code_cell("answer = 42")
    cell.metadata["tags"] = ["answer-key"]
    with pytest.raises(book_edition.EditionError, match="must be a markdown cell"):
        book_edition.public_notebook(nbformat.v4.new_notebook(cells=[cell]))


def test_the_built_book_is_the_public_edition_without_solutions_or_answer_keys():
    """The book under test (make test's build, or make book's) shows no solution body and no answer key."""
    require_built_book()
    from scripts import book_edition, notebook_tags

    info = json.loads((HTML_DIR / build_book.BUILD_INFO).read_text(encoding="utf-8"))
    assert info["edition"] == "public", info
    checked = 0
    for path in build_book.toc_notebooks():
        nb = notebook_tags.read_notebook(path)
        if not book_edition.secret_passages(nb):
            continue
        page = HTML_DIR / path.relative_to(ROOT).with_suffix(".html")
        assert not book_edition.leaks(nb, page.read_text(encoding="utf-8")), f"{page.name} shows solutions or answer keys"
        checked += 1
    assert checked >= 5, f"only {checked} chapters have solutions or answer keys: the test would prove little"


def test_a_fallback_page_is_marked_as_such_in_the_book_and_in_its_build_info(tmp_path):
    """utils.data's fallback note makes a page a fallback page, in build-info.json, and the page says so."""
    (tmp_path / "book").mkdir()
    note = ("<div class=\"output stream\"><pre>NOTE: CIFAR-10 is not available here (no copy); quick mode is using an "
            "embedded FALLBACK instead: scikit-learn&#39;s 8x8 handwritten digits resized to 32x32.</pre></div>")  # fmt: skip
    (tmp_path / "book" / "04_training.html").write_text(f"<html><body>{note}</body></html>", encoding="utf-8")
    (tmp_path / "book" / "03_resnet18.html").write_text("<html><body>CIFAR-10 numbers</body></html>", encoding="utf-8")
    assert build_book.fallback_pages(tmp_path) == {"book/04_training.html": ["CIFAR-10"]}


def test_switching_the_data_back_and_forth_keeps_one_cache_per_data(scratch_repo):
    """A build without data never reuses (nor empties) the pages executed on CIFAR-10, and back."""
    repo, data_dir = scratch_repo
    without = build_book.prepare_cache("quick", force=False)
    (without / "page").write_text("executed on the fallback")
    (data_dir / "cifar10.tgz").write_bytes(b"an archive")
    with_data = build_book.prepare_cache("quick", force=False)
    assert with_data != without and with_data.name.startswith("cifar10-") and without.name.startswith("no-local-data-")
    (with_data / "page").write_text("executed on CIFAR-10")
    (data_dir / "cifar10.tgz").unlink()
    assert build_book.prepare_cache("quick", force=False) == without
    assert (without / "page").read_text() == "executed on the fallback"
    assert (with_data / "page").read_text() == "executed on CIFAR-10", "the CIFAR-10 cache is kept for the next build"
    with pytest.raises(ValueError, match="mode 'fast': expected one of quick, full"):
        build_book.prepare_cache("fast", force=False)


FAKE_JUPYTER_BOOK = """
import sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--path-output") + 1]) / "_build" / "html"
(out / "_static" / "mathjax").mkdir(parents=True)
(out / "_static" / "mathjax" / "tex-chtml.js").write_text("mathjax")
(out / "index.html").write_text("<html>the new book</html>")
if "{page}":
    (out / "broken.html").write_text('<div class="output traceback highlight-ipythontb">{page}</div>')
sys.exit({status})
"""


@pytest.mark.parametrize(
    "status, page, published",
    [(0, "", True), (1, "", False), (0, "ValueError: a cell failed", False)],
    ids=["success", "build-failed", "traceback-on-a-page"],
)
def test_the_book_is_published_only_when_the_build_succeeded_and_no_page_shows_a_traceback(
    scratch_repo, monkeypatch, tmp_path, status, page, published
):
    repo, _ = scratch_repo
    build = repo / "_build"
    for name, value in {"BUILD_DIR": build, "GENERATED_DIR": build / ".generated", "STAGING_DIR": build / ".staging",
                        "HTML_DIR": build / "html"}.items():  # fmt: skip
        monkeypatch.setattr(build_book, name, value)
    monkeypatch.setattr(build_book, "DEFAULT_OUT", {"public": build / "html", "instructor": build / "instructor" / "html"})
    monkeypatch.setattr(build_book, "load_config", lambda: {})
    monkeypatch.setattr(build_book, "toc_notebooks", lambda: [])
    fake = tmp_path / "fake_jupyter_book.py"
    fake.write_text(FAKE_JUPYTER_BOOK.format(status=status, page=page))
    monkeypatch.setattr(build_book, "jupyter_book_command", lambda: [sys.executable, str(fake)])
    published_book = build / "test" / "html"
    published_book.mkdir(parents=True)
    (published_book / "index.html").write_text("<html>the last good book</html>")
    code = build_book.main(["--mode", "quick", "--jobs", "1", "--out", str(published_book)])
    index = (published_book / "index.html").read_text()
    assert (code == 0) == published
    assert index == ("<html>the new book</html>" if published else "<html>the last good book</html>")
    assert not (build / "html").exists(), "a build with --out never writes the book that `make book` publishes"
    if published:
        info = json.loads((published_book / build_book.BUILD_INFO).read_text())
        assert info["mode"] == "quick" and info["edition"] == "public" and info["data"] == {"cifar10": False, "mnist": False}
        assert info["fallback_pages"] == {}


@pytest.mark.parametrize("out", ["_build", "_build/.jupyter_cache/x", "elsewhere/html"])
def test_the_book_is_never_published_over_the_build_folder_itself(out):
    with pytest.raises(SystemExit):
        build_book.main(["--out", str(ROOT / out)])
