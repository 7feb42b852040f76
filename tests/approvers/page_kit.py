"""A blank page in headless Chromium that can import the approver page's own modules.

For tests that call the page's JavaScript directly (its challenge check, its policy diff):
a loopback server answers a blank HTML page and only the named module files, so the page
code under test is the shipped file, run by a real browser.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")

#: What every module that drives Chromium declares as its ``pytestmark``.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at "
                       "/usr/bin/chromium (apt-get install chromium); CI installs it"),
    pytest.mark.slow,
]
PAGE_DIR = Path(__file__).resolve().parents[2] / "approvals_app" / "approver_page"


@contextmanager
def blank_page(*modules: str) -> Iterator[Any]:
    """A page at ``http://localhost:<port>/`` (a secure context) that serves ``modules``
    (file names in the approver page's folder) at ``/<name>`` and nothing else."""
    from playwright import sync_api

    files = {f"/{name}": PAGE_DIR / name for name in modules}

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in files:
                body, kind = files[self.path].read_bytes(), "text/javascript"
            else:
                body, kind = b"<!doctype html><title>page test</title>", "text/html"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://localhost:{server.server_address[1]}/")
            yield page
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
