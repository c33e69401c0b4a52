"""An asyncio echo server with two clients in its tree.

    echo_server.py PORTFILE

The server listens on 127.0.0.1 (a free port, written to PORTFILE) and
echoes every line.  A child process runs two asyncio clients; each sends
numbered lines "C N" (N = 1, 2, 3, ...) every few milliseconds and checks
that the echoes come back in order, none lost or repeated.  "ready" once
both clients have had 20 echoes.

On SIGTERM the server stops its child (SIGTERM), which prints each
client's count and exits 0 if every echo was in order; the server prints
PASS or FAIL.  A client outside the tree may connect at any time.
"""
import asyncio
import os
import signal
import socket
import sys

CLIENTS = 2


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def serve(lsk: socket.socket) -> None:
    server = await asyncio.start_server(handle, sock=lsk)
    async with server:
        await server.serve_forever()


async def one_client(port: int, name: str, counts: dict[str, int], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0

    async def send() -> None:
        nonlocal n
        while True:
            n += 1
            writer.write(f"{name} {n}\n".encode())
            await writer.drain()
            await asyncio.sleep(0.003)

    task = asyncio.ensure_future(send())
    want = 1
    try:
        while True:
            line = await reader.readline()
            if not line:
                errors.append(f"{name}: EOF after {want - 1}")
                return
            if line != f"{name} {want}\n".encode():
                errors.append(f"{name}: got {line!r}, want {want}")
                return
            counts[name] = want
            want += 1
    except ConnectionError as exc:
        errors.append(f"{name}: {exc!r} after {want - 1}")
    finally:
        task.cancel()


def client_main(port: int, ready_w: int) -> None:
    counts: dict[str, int] = {}
    errors: list[str] = []
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))

    async def run() -> None:
        tasks = [asyncio.ensure_future(one_client(port, f"c{i}", counts, errors))
                 for i in range(CLIENTS)]
        while len(counts) < CLIENTS or min(counts.values()) < 20:
            if errors:
                break
            await asyncio.sleep(0.01)
        os.write(ready_w, b"r")
        os.close(ready_w)
        await stop
        for t in tasks:
            t.cancel()
    loop.run_until_complete(run())
    for name in sorted(counts):
        say(f"client {name}: {counts[name]} echoes in order")
    for e in errors:
        say("client error: " + e)
    os._exit(0 if not errors and len(counts) == CLIENTS else 1)


def main() -> int:
    lsk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsk.bind(("127.0.0.1", 0))
    lsk.listen(16)
    port = lsk.getsockname()[1]
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        lsk.close()
        client_main(port, w)
    os.close(w)
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    srv = loop.create_task(serve(lsk))

    async def wait_ready() -> None:
        rr = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(rr), os.fdopen(r, "rb"))
        await rr.read(1)
        say("ready")
        await stop
    loop.run_until_complete(wait_ready())
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    srv.cancel()
    say("PASS" if status == 0 else f"FAIL: client process exited with {status:#x}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
