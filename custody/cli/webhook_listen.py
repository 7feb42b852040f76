"""``custody webhook-listen``: a development receiver for the treasury's webhooks.

It does what a desk's receiver must (:func:`custody.treasury.webhooks.verify`: the
HMAC over ``"<t>.<body>"`` with the endpoint's secret, a fresh ``t``) and prints one line
per verified event - ``transfer <id> <state>`` - so the quickstart shows deliveries
arrive signed. A delivery that does not verify is answered 401 and printed as refused.
Development only: plain HTTP on the loopback by default.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import typer

from ..console import fail
from ..treasury.webhooks import verify

#: Larger bodies are refused unread: an event is one transfer's JSON.
MAX_BODY = 1 << 20


def webhook_listen(port: int = typer.Option(9000, min=1, max=65535),
                   host: str = typer.Option("127.0.0.1", help="Listen address."),
                   secret: str = typer.Option(..., envvar="CUSTODY_WEBHOOK_SECRET",
                                              help="The secret POST /v1/webhooks answered."),
                   ) -> None:
    """Receive webhooks, verify their signature, print one line per event (Ctrl-C stops)."""

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 < size <= MAX_BODY:
                self._answer(413)
                return
            body = self.rfile.read(size)
            header = self.headers.get("X-Custody-Signature", "")
            if not verify(secret, header, body, time.time()):
                print("refused: a delivery whose signature does not verify", flush=True)
                self._answer(401)
                return
            event = json.loads(body)
            transfer = event.get("transfer") or {}
            print(f"{event.get('type')} transfer {transfer.get('id')} {transfer.get('state')}",
                  flush=True)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the lines above are the output."""

    try:
        server = ThreadingHTTPServer((host, port), Receiver)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    print(f"listening for webhooks on http://{host}:{port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
