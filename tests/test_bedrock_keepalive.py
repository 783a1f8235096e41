"""Streamed answers are framed (chunked) so clients keep their connection and see truncation."""
from __future__ import annotations

import http.client
import json

from support import SONNET_WIRE, anthropic_body


def test_streams_are_chunked_and_the_connection_is_reused(gateway, mock_bedrock):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    body = json.dumps(anthropic_body()).encode()
    for _ in range(3):
        conn.request("POST", f"/bedrock/model/{SONNET_WIRE}/invoke-with-response-stream", body=body,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("transfer-encoding") == "chunked"
        assert resp.getheader("connection", "").lower() != "close"
        data = resp.read()
        assert data, "an event stream"
        assert not resp.will_close, "the connection stays open for the next request"
    sock = conn.sock
    conn.request("POST", f"/bedrock/model/{SONNET_WIRE}/invoke", body=body, headers={"content-type": "application/json"})
    assert conn.getresponse().read() and conn.sock is sock, "same connection throughout"
