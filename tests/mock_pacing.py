#!/usr/bin/env python3
"""A pacing mock of the Amazon Bedrock runtime, for holding thousands of streams open at once.

``mock_bedrock.py`` runs a thread per connection, too heavy for the 2,000 concurrent streams of
``test_scale.py`` on a 2-core machine; this mock is one asyncio loop. It checks what the other
mocks check, with their code: the gateway's SigV4 signature (``mock_bedrock.verify_sigv4`` with
the test key pair), the InvokeModel body rules Bedrock enforces (``_validate_anthropic_body``),
and that no client credential reached it (``Recorded.leaked_credentials``). It answers with the
same framing (``chunk_frame``) and the same usage numbers (``USAGE_*``), so the audit records
of answered requests carry the tokens ``test_stock_plugins.check_one_record_per_request``
expects.

* ``POST /model/{id}/invoke-with-response-stream``: ``message_start`` and
  ``content_block_start`` at once, then one ``content_block_delta`` every ``interval`` seconds
  (``deltas`` of them, on a fixed schedule from the request's arrival), then
  ``content_block_stop``, ``message_delta`` and ``message_stop`` (with
  ``amazon-bedrock-invocationMetrics``): ``deltas + 5`` frames. Each frame goes out in two HTTP
  chunks, split inside the prelude, so half-frames sit in the gateway's buffer.
* ``POST /model/{id}/invoke``: the JSON Messages answer with Bedrock's token-count headers.
* ``GET /_mock/stats``: what it saw, as JSON (not a Bedrock path; for the test).

A request that fails a check gets Bedrock's error (403 for the signature, 400
``ValidationException`` for the body) and is counted in the stats with its message.

Standalone (the test runs it so, as a process of its own)::

    python tests/mock_pacing.py --port 0 --deltas 6 --interval 1.0
    # prints "mock-pacing listening on http://127.0.0.1:PORT" once it accepts connections
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
import types
import urllib.parse
import uuid

import mock_bedrock as mb

# The text of delta ``i`` of every stream; the test checks it.
def delta_text(i: int) -> str:
    return f"tick{i} "


class PacingMock:
    def __init__(self, *, deltas: int, interval: float, access_key: str = mb.TEST_ACCESS_KEY,
                 secret_key: str = mb.TEST_SECRET_KEY, region: str = mb.TEST_REGION):
        self.deltas, self.interval = deltas, interval
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.stats = {
            "requests": 0, "model_calls": 0, "invokes": 0, "sig_ok": 0,
            "rejected": 0, "rejections": {},           # message -> count (signature, body, path)
            "leaks": 0, "leaked": [],                  # client credentials that reached the mock
            "streams_started": 0, "streams_completed": 0, "streams_aborted": 0,
            "open_streams": 0, "max_open_streams": 0, "connections": 0, "max_connections": 0,
            "frames_sent": 0,
        }
        # A stand-in for mock_bedrock's handler, so its body validation runs unchanged.
        self._validator = types.SimpleNamespace(
            mock=types.SimpleNamespace(check_beta_header=False, accepted_betas=list(mb.ACCEPTED_BETAS)),
            rec=types.SimpleNamespace(headers=[], rejected_betas=[]))

    # ---- connections ---------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self.stats
        s["connections"] += 1
        s["max_connections"] = max(s["max_connections"], s["connections"])
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            s["connections"] -= 1
            writer.close()

    async def _one_request(self, reader, writer) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the peer closed between requests
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        hmap = {k.lower(): v for k, v in headers}
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            body = bytes(body)
        else:
            n = int(hmap.get("content-length") or 0)
            body = await reader.readexactly(n) if n else b""
        keep_alive = hmap.get("connection", "").lower() != "close"
        self.stats["requests"] += 1
        await self._route(method, target, headers, body, writer)
        return keep_alive

    # ---- checks and answers ----------------------------------------------------------------------
    def _reject(self, writer, status: int, errortype: str, message: str) -> None:
        s = self.stats
        s["rejected"] += 1
        key = f"{status} {errortype}: {message}"
        s["rejections"][key] = s["rejections"].get(key, 0) + 1
        self._write_json(writer, status, {"message": message}, {"x-amzn-ErrorType": errortype})

    async def _route(self, method, target, headers, body, writer) -> None:
        path, _, _query = target.partition("?")
        if method == "GET" and path == "/_mock/stats":
            self._write_json(writer, 200, self.stats)
            return await writer.drain()
        m = re.fullmatch(r"/model/([^/]+)/(invoke|invoke-with-response-stream)", path)
        if not m or method != "POST":
            self._reject(writer, 404, "UnknownOperationException", f"Unknown operation {method} {path}")
            return await writer.drain()
        s = self.stats
        s["model_calls"] += 1
        model_id = urllib.parse.unquote(m.group(1))
        verdict = mb.verify_sigv4(method, target, headers, body, access_key=self.access_key,
                                  secret_key=self.secret_key, region=self.region, service="bedrock")
        rec = mb.Recorded(method=method, target=target, path=path, query=_query, headers=headers,
                          body=body, verdict=verdict, received_at=time.time())
        leaked = rec.leaked_credentials()
        if leaked:
            s["leaks"] += 1
            if len(s["leaked"]) < 5:
                s["leaked"].append(leaked)
        if not verdict.ok:
            self._reject(writer, 403, verdict.error_type, verdict.message)
            return await writer.drain()
        s["sig_ok"] += 1
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            self._reject(writer, 400, "ValidationException",
                         "Malformed input request, please reformat your input and try again.")
            return await writer.drain()
        self._validator.rec.headers = headers
        try:
            mb._Handler._validate_anthropic_body(self._validator, req)
        except mb.BedrockError as e:
            self._reject(writer, e.status, e.errortype, e.message)
            return await writer.drain()
        if m.group(2) == "invoke":
            return await self._invoke(model_id, writer)
        return await self._stream(model_id, writer)

    def _write_json(self, writer, status: int, obj, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                "Content-Type: application/json", f"Content-Length: {len(data)}",
                f"x-amzn-RequestId: {uuid.uuid4()}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

    async def _invoke(self, model_id: str, writer) -> None:
        self.stats["invokes"] += 1
        self._write_json(writer, 200, {
            "id": "msg_bdrk_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": mb._base_model(model_id),
            "content": [{"type": "text", "text": mb.DEFAULT_ANSWER}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": mb.USAGE_INPUT, "cache_creation_input_tokens": mb.USAGE_CACHE_CREATION,
                      "cache_read_input_tokens": mb.USAGE_CACHE_READ, "output_tokens": mb.USAGE_OUTPUT},
        }, {
            "X-Amzn-Bedrock-Input-Token-Count": str(mb.USAGE_INPUT),
            "X-Amzn-Bedrock-Output-Token-Count": str(mb.USAGE_OUTPUT),
            "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": str(mb.USAGE_CACHE_READ),
            "X-Amzn-Bedrock-Cache-Write-Input-Token-Count": str(mb.USAGE_CACHE_CREATION),
            "X-Amzn-Bedrock-Invocation-Latency": "321",
        })
        await writer.drain()

    @staticmethod
    def _chunks(frame: bytes) -> bytes:
        # Two HTTP chunks per frame, split inside the 12-byte prelude.
        a, b = frame[:9], frame[9:]
        return b"%x\r\n%s\r\n%x\r\n%s\r\n" % (len(a), a, len(b), b)

    async def _stream(self, model_id: str, writer) -> None:
        s = self.stats
        s["streams_started"] += 1
        s["open_streams"] += 1
        s["max_open_streams"] = max(s["max_open_streams"], s["open_streams"])
        # mock_bedrock's events (same usage numbers), one text delta per tick.
        events = mb._Handler._anthropic_events(None, model_id, [delta_text(i) for i in range(self.deltas)])
        frames = [mb.chunk_frame(e, i) for i, e in enumerate(events)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            writer.write(("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\n"
                          "Transfer-Encoding: chunked\r\n"
                          f"x-amzn-RequestId: {uuid.uuid4()}\r\n"
                          "X-Amzn-Bedrock-Content-Type: application/json\r\n\r\n").encode()
                         + self._chunks(frames[0]) + self._chunks(frames[1]))
            await writer.drain()
            s["frames_sent"] += 2
            for i in range(self.deltas):
                await asyncio.sleep(max(0.0, start + (i + 1) * self.interval - loop.time()))
                writer.write(self._chunks(frames[2 + i]))
                await writer.drain()
                s["frames_sent"] += 1
            writer.write(b"".join(self._chunks(f) for f in frames[2 + self.deltas:]) + b"0\r\n\r\n")
            await writer.drain()
            s["frames_sent"] += 3
            s["streams_completed"] += 1
        except ConnectionError:
            s["streams_aborted"] += 1
            raise
        finally:
            s["open_streams"] -= 1


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(mock: PacingMock, host: str, port: int) -> None:
    server = await asyncio.start_server(mock.handle, host, port, backlog=4096, limit=1 << 20)
    bound = server.sockets[0].getsockname()[1]
    print(f"mock-pacing listening on http://{host}:{bound} ({mock.deltas} deltas, one every "
          f"{mock.interval} s)", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--deltas", type=int, default=5, help="paced text deltas per stream")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between deltas")
    args = ap.parse_args(argv)
    raise_nofile_limit()
    try:
        asyncio.run(serve(PacingMock(deltas=args.deltas, interval=args.interval), args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
