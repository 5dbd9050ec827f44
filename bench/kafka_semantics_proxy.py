#!/usr/bin/env python3
"""A Kafka-semantics fetch shim for the latency bench (bench/latency.sh).

tansu 0.6 holds a Fetch for about its whole max_wait_ms when the partition had
nothing at its first look, even when records arrive meanwhile; Kafka answers
a fetch as soon as fetch.min.bytes are available. This TCP proxy sits between
the clients and a tansu of its own (which advertises the proxy's address, so
Metadata and FindCoordinator send the clients back here) and gives Fetch
Kafka's long poll:

  * every request and response is forwarded unchanged, except Fetch
    (api_key 1): the proxy sends tansu the same fetch with a short max_wait
    (--inner-wait-ms, 5 ms; tansu answers max_wait 0 with no topics at all)
    and repeats it until the response carries at least min_bytes of records
    (or an error), or the client's own max_wait has passed; the client gets
    the last response, under its own correlation id;
  * responses go back to each client in the order of its requests (a held
    fetch holds the responses of the requests behind it on that connection,
    as Kafka's muted channel does); upstream, requests are pipelined on one
    connection per client, under the proxy's own correlation ids;
  * Produce with acks=0 gets no response, as in the protocol.

Usage: kafka_semantics_proxy.py --listen 127.0.0.1:9192 --upstream 127.0.0.1:9193
On SIGINT/SIGTERM it prints its counts on stderr and exits.

A bench tool: Python asyncio is fast enough for 1,000 events/s (a fetch is a
few hundred bytes; see bench/RESULTS.md for its cost).
"""

import argparse
import asyncio
import collections
import signal
import struct
import sys
import time

FETCH = 1
PRODUCE = 0
# First flexible (compact strings/arrays, tagged fields) version per API this
# proxy parses; the header of any other API is only read up to client_id.
FETCH_FLEXIBLE = 12
PRODUCE_FLEXIBLE = 9


class Malformed(Exception):
    pass


class Reader:
    """Kafka primitive types from a bytes object."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf, pos=0):
        self.buf = buf
        self.pos = pos

    def take(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            raise Malformed(f"need {n} bytes at {self.pos} of {len(self.buf)}")
        start = self.pos
        self.pos += n
        return start

    def i8(self):
        return struct.unpack_from(">b", self.buf, self.take(1))[0]

    def i16(self):
        return struct.unpack_from(">h", self.buf, self.take(2))[0]

    def i32(self):
        return struct.unpack_from(">i", self.buf, self.take(4))[0]

    def i64(self):
        return struct.unpack_from(">q", self.buf, self.take(8))[0]

    def uvarint(self):
        shift = 0
        value = 0
        while True:
            b = self.buf[self.take(1)]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise Malformed("varint too long")

    def skip_string(self, compact):
        n = self.uvarint() - 1 if compact else self.i16()
        if n > 0:
            self.take(n)

    def bytes_len(self, compact):
        """Length of a (nullable) BYTES/RECORDS field, skipped; -1 for null."""
        n = self.uvarint() - 1 if compact else self.i32()
        if n > 0:
            self.take(n)
        return n

    def array_len(self, compact):
        return self.uvarint() - 1 if compact else self.i32()

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())


def request_header(buf):
    """(api_key, api_version, correlation_id, offset of the body)."""
    r = Reader(buf)
    api_key, api_version, correlation_id = r.i16(), r.i16(), r.i32()
    r.skip_string(False)  # client_id: a nullable non-compact string in every header version
    flexible = (api_key == FETCH and api_version >= FETCH_FLEXIBLE) or (
        api_key == PRODUCE and api_version >= PRODUCE_FLEXIBLE
    )
    if flexible:
        r.skip_tags()
    return api_key, api_version, correlation_id, r.pos, flexible


def fetch_request(buf, body, version):
    """(offset of max_wait_ms, max_wait_ms, min_bytes, session_id, session_epoch)."""
    r = Reader(buf, body)
    if version < 15:
        r.i32()  # replica_id (v15+: a tagged field, ReplicaState)
    at = r.pos
    max_wait, min_bytes = r.i32(), r.i32()
    session_id = session_epoch = None
    if version >= 3:
        r.i32()  # max_bytes
    if version >= 4:
        r.i8()  # isolation_level
    if version >= 7:
        session_id, session_epoch = r.i32(), r.i32()
    flexible = version >= FETCH_FLEXIBLE
    offsets = {}  # (topic name or id, partition) -> fetch_offset
    for _ in range(max(r.array_len(flexible), 0)):
        topic = topic_key(r, version)
        for _ in range(max(r.array_len(flexible), 0)):
            partition = r.i32()
            if version >= 9:
                r.i32()  # current_leader_epoch
            offsets[(topic, partition)] = r.i64()
            if version >= 12:
                r.i32()  # last_fetched_epoch
            if version >= 5:
                r.i64()  # log_start_offset
            r.i32()  # partition_max_bytes
            if flexible:
                r.skip_tags()
        if flexible:
            r.skip_tags()
    return at, max_wait, min_bytes, session_id, session_epoch, offsets


def topic_key(r, version):
    """A topic's name (v0-12) or id (v13+), as bytes."""
    if version >= 13:
        return bytes(r.buf[r.take(16) : r.pos])
    start = r.pos
    r.skip_string(version >= FETCH_FLEXIBLE)
    return bytes(r.buf[start : r.pos])


def fetch_response(buf, version, lag=None):
    """(record bytes in the response, any error code set) of a FetchResponse
    (its header included): FetchResponse.json, versions 0-17. With `lag` (a
    dict), counts its record batches and how far the last record returned of
    a partition is behind that partition's high watermark."""
    flexible = version >= FETCH_FLEXIBLE
    r = Reader(buf)
    r.i32()  # correlation_id
    if flexible:
        r.skip_tags()
    error = False
    if version >= 1:
        r.i32()  # throttle_time_ms
    if version >= 7:
        error |= r.i16() != 0
        r.i32()  # session_id
    total = 0
    for _ in range(max(r.array_len(flexible), 0)):
        topic = topic_key(r, version)
        for _ in range(max(r.array_len(flexible), 0)):
            partition = r.i32()
            error |= r.i16() not in (0,)
            hwm = r.i64()  # high_watermark
            if version >= 4:
                r.i64()  # last_stable_offset
            if version >= 5:
                r.i64()  # log_start_offset
            if version >= 4:
                for _ in range(max(r.array_len(flexible), 0)):
                    r.i64()  # producer_id
                    r.i64()  # first_offset
                    if flexible:
                        r.skip_tags()
            if version >= 11:
                r.i32()  # preferred_read_replica
            at = r.pos
            n = r.bytes_len(flexible)
            if n > 0:
                total += n
                if lag is not None:
                    # The record batches: base_offset i64, batch_length i32, ...,
                    # last_offset_delta i32 at byte 23 of a batch.
                    end = r.pos
                    b = end - n
                    last = None
                    while b + 27 <= end:
                        base, length = struct.unpack_from(">qi", buf, b)
                        last = base + struct.unpack_from(">i", buf, b + 23)[0]
                        lag["batches"] += 1
                        b += 12 + length
                    if last is not None:
                        lag["behind"] = max(lag["behind"], hwm - last - 1)
            if lag is not None and n <= 0 and hwm > lag["offsets"].get((topic, partition), hwm):
                # no records although the broker holds some at the offset asked for
                lag["starved"].append((partition, lag["offsets"][(topic, partition)], hwm))
            if flexible:
                r.skip_tags()  # diverging_epoch, current_leader, snapshot_id
        if flexible:
            r.skip_tags()
    if flexible:
        r.skip_tags()  # node_endpoints (v16+)
    if r.pos != len(buf):
        raise Malformed(f"{len(buf) - r.pos} bytes left over")
    return total, error


def produce_acks(buf, body, version):
    r = Reader(buf, body)
    if version >= 3:
        r.skip_string(version >= PRODUCE_FLEXIBLE)  # transactional_id
    return r.i16()


class Stats:
    def __init__(self):
        self.fetches = 0
        self.inner = 0
        self.with_records = 0
        self.timed_out = 0
        self.passed_through = 0
        self.slow = 0
        self.batches = self.responses = self.behind = self.max_behind = self.starved = 0
        self.versions = collections.Counter()
        self.sessions = collections.Counter()
        self.held_ms = []

    def report(self):
        held = sorted(self.held_ms)

        def pct(p):
            return held[min(len(held) - 1, int(p * len(held)))] if held else 0

        return (
            f"fetches {self.fetches} (versions {dict(self.versions)}, "
            f"session id/epoch {dict(self.sessions)}): {self.with_records} with records, "
            f"{self.timed_out} empty at the client's max_wait, {self.passed_through} passed through; "
            f"{self.inner} fetches sent to the broker ({self.slow} answered in more than the slow threshold); held p50 {pct(0.5):.1f} / p99 {pct(0.99):.1f} ms"
            + (f"; {self.batches} record batches in {self.responses} broker responses with records,"
               f" {self.behind} of them short of a high watermark (at most {self.max_behind} records);"
               f" {self.starved} broker responses with a partition empty below its high watermark"
               if self.responses else "")
        )


class Connection:
    def __init__(self, args, stats, client_reader, client_writer):
        self.args = args
        self.stats = stats
        self.cr = client_reader
        self.cw = client_writer
        self.next_id = 0
        self.pending = {}  # upstream correlation id -> future of the response
        self.order = asyncio.Queue()  # per client request: (future of the response, client id)

    async def run(self):
        host, port = self.args.upstream
        try:
            self.ur, self.uw = await asyncio.open_connection(host, port)
        except OSError as err:
            print(f"proxy: upstream {host}:{port}: {err}", file=sys.stderr)
            self.cw.close()
            return
        for w in (self.cw, self.uw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tasks = [
            asyncio.create_task(self.upstream_reader()),
            asyncio.create_task(self.client_writer()),
            asyncio.create_task(self.client_reader()),
        ]
        done, rest = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in rest:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() and not isinstance(
                t.exception(), (asyncio.IncompleteReadError, ConnectionError)
            ):
                print(f"proxy: connection closed on {t.exception()!r}", file=sys.stderr)
        for w in (self.cw, self.uw):
            w.close()

    async def send_upstream(self, frame):
        """Send a request (its correlation id replaced); a future of its response."""
        self.next_id = (self.next_id + 1) & 0x7FFFFFFF
        cid = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.pending[cid] = fut
        out = bytearray(frame)
        struct.pack_into(">i", out, 4, cid)
        self.uw.write(struct.pack(">i", len(out)) + out)
        return fut

    def timer(self, api_key, version, sent):
        def done(_):
            ms = (time.monotonic() - sent) * 1000
            if ms > self.args.slow_ms:
                print(f"proxy: {time.strftime('%H:%M:%S')} api {api_key} v{version} took the broker {ms:.0f} ms",
                      file=sys.stderr, flush=True)

        return done

    async def upstream_reader(self):
        while True:
            size = struct.unpack(">i", await self.ur.readexactly(4))[0]
            payload = await self.ur.readexactly(size)
            cid = struct.unpack_from(">i", payload, 0)[0]
            fut = self.pending.pop(cid, None)
            if fut is None:
                raise Malformed(f"response to unknown correlation id {cid}")
            fut.set_result(payload)

    async def client_writer(self):
        while True:
            fut, client_cid = await self.order.get()
            payload = await fut
            if payload is None:  # Produce with acks=0
                continue
            out = bytearray(payload)
            struct.pack_into(">i", out, 0, client_cid)
            self.cw.write(struct.pack(">i", len(out)) + out)
            await self.cw.drain()

    async def client_reader(self):
        while True:
            size = struct.unpack(">i", await self.cr.readexactly(4))[0]
            frame = await self.cr.readexactly(size)
            try:
                api_key, version, cid, body, _ = request_header(frame)
            except Malformed:
                api_key, version, cid, body = -1, -1, struct.unpack_from(">i", frame, 4)[0], 0
            loop = asyncio.get_running_loop()
            if self.args.trace:
                print(f"{time.time():.3f} conn {id(self) % 10000} api {api_key} v{version} cid {cid}",
                      file=self.args.trace, flush=True)
            if api_key == FETCH:
                self.stats.fetches += 1
                self.stats.versions[version] += 1
                fut = loop.create_future()
                self.order.put_nowait((fut, cid))
                # Fetches of one connection are held one after the other.
                await self.long_poll(frame, body, version, fut)
            elif api_key == PRODUCE and produce_acks(frame, body, version) == 0:
                await self.send_upstream(frame)
                # no response will come: forget it
                self.pending.pop(self.next_id, None)
                done = loop.create_future()
                done.set_result(None)
                self.order.put_nowait((done, cid))
            else:
                fut = await self.send_upstream(frame)
                if self.args.verbose:
                    fut.add_done_callback(self.timer(api_key, version, time.monotonic()))
                self.order.put_nowait((fut, cid))

    async def long_poll(self, frame, body, version, result):
        start = time.monotonic()
        try:
            at, max_wait, min_bytes, sid, epoch, offsets = fetch_request(frame, body, version)
            self.stats.sessions[(sid, epoch)] += 1
        except Malformed as err:
            print(f"proxy: fetch v{version} not parsed ({err}); passed through", file=sys.stderr)
            self.stats.passed_through += 1
            result.set_result(await (await self.send_upstream(frame)))
            return
        inner = bytearray(frame)
        struct.pack_into(">i", inner, at, min(self.args.inner_wait_ms, max(max_wait, 0)))
        deadline = start + max(max_wait, 0) / 1000
        while True:
            self.stats.inner += 1
            sent = time.monotonic()
            response = await (await self.send_upstream(inner))
            rtt = (time.monotonic() - sent) * 1000
            if rtt > self.args.slow_ms:
                self.stats.slow += 1
                if self.args.verbose:
                    print(f"proxy: {time.strftime('%H:%M:%S')} a fetch v{version} took the broker {rtt:.0f} ms",
                          file=sys.stderr, flush=True)
            try:
                lag = {"batches": 0, "behind": 0, "offsets": offsets, "starved": []} if self.args.verbose else None
                records, error = fetch_response(response, version, lag)
                if lag is not None and lag["starved"]:
                    self.stats.starved += 1
                    if self.args.trace:
                        print(f"{time.time():.3f} conn {id(self) % 10000} starved (partition, fetch offset,"
                              f" high watermark): {lag['starved']}", file=self.args.trace, flush=True)
                if lag is not None and records:
                    self.stats.batches += lag["batches"]
                    self.stats.responses += 1
                    if lag["behind"] > 0:
                        self.stats.behind += 1
                        self.stats.max_behind = max(self.stats.max_behind, lag["behind"])
            except Malformed as err:
                print(f"proxy: fetch response v{version} not parsed ({err}); handed over", file=sys.stderr)
                break
            if error or records >= max(min_bytes, 1):
                self.stats.with_records += not error
                break
            now = time.monotonic()
            if now >= deadline:
                self.stats.timed_out += 1
                break
            if self.args.poll_interval_ms > 0:
                await asyncio.sleep(min(self.args.poll_interval_ms / 1000, deadline - now))
        self.stats.held_ms.append((time.monotonic() - start) * 1000)
        if self.args.trace:
            print(f"{time.time():.3f} conn {id(self) % 10000} fetch held {(time.monotonic() - start) * 1000:.1f} ms"
                  f" ({records} bytes of records)", file=self.args.trace, flush=True)
        if len(self.stats.held_ms) > 200_000:
            del self.stats.held_ms[:100_000]
        result.set_result(response)


def hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=hostport, required=True)
    p.add_argument("--upstream", type=hostport, required=True)
    p.add_argument("--inner-wait-ms", type=int, default=5, help="max_wait_ms of the fetches sent to the broker")
    p.add_argument("--poll-interval-ms", type=float, default=0, help="pause between two of them")
    p.add_argument("--slow-ms", type=float, default=50, help="count (and with -v log) broker fetches slower than this")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--trace", type=argparse.FileType("w"), help="log every request to this file")
    args = p.parse_args()
    stats = Stats()

    async def serve(reader, writer):
        try:
            await Connection(args, stats, reader, writer).run()
        except asyncio.CancelledError:
            # Connections still open when the proxy stops: not an error.
            writer.close()

    server = await asyncio.start_server(serve, *args.listen)
    print(f"proxy: listening on {args.listen[0]}:{args.listen[1]} → {args.upstream[0]}:{args.upstream[1]}",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: print(f"proxy: {stats.report()}", file=sys.stderr, flush=True)
    )
    await stop.wait()
    server.close()
    print(f"proxy: {stats.report()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
