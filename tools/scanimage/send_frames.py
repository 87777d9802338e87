#!/usr/bin/env python3
"""Send imaging frames to `rig` in the twinrig frame protocol, version 1 (docs/frame-protocol.md).

A reference sender for acquisition code written in Python (a camera SDK's callback, a test client).
Needs numpy; the protocol itself is only `struct`, `zlib.crc32` and a socket.

As a library:

    from send_frames import FrameSender
    with FrameSender("127.0.0.1:7700") as tx:           # or "unix:/run/twinrig/frames.sock"
        for i, (img, t) in enumerate(frames):           # img: (height, width) uint16, row-major
            tx.send_frame(img, index=i, timestamp=t)    # t on the sender's clock (clock=1)
        print(tx.finish())                              # "OK frames=N rejected=M"

As a command (synthetic frames, or frames from an .npy file of shape (n, height, width)):

    python3 send_frames.py --to 127.0.0.1:7700 --height 512 --width 512 --frames 300 --rate 30
    python3 send_frames.py --to unix:/tmp/rig.sock --npy frames.npy --rate 0   # 0 = as fast as possible

Not used by the Rust tests (`rig stream` is the tested sender); checked by hand against
`rig stream-recv`.
"""

import argparse
import socket
import struct
import sys
import time
import zlib

import numpy as np

MAGIC = b"TRIGFRM1"
VERSION = 1
KIND_FRAME = 1
KIND_END = 2
DTYPE_U16 = 1
CLOCK_RIG = 0
CLOCK_SENDER = 1
# magic, version, kind, plane, dtype, index, timestamp, height, width, payload_len, clock, reserved
_HEAD = struct.Struct("<8sHHHHQdIIQH10x")
assert _HEAD.size == 60


def encode_header(kind, index, timestamp, height, width, plane=0, clock=CLOCK_SENDER, dtype=DTYPE_U16):
    """The 64-byte header: 60 bytes of fields, then the CRC-32 of those 60 bytes."""
    payload_len = height * width * 2 if kind == KIND_FRAME else 0
    head = _HEAD.pack(MAGIC, VERSION, kind, plane, dtype, index, float(timestamp),
                      height, width, payload_len, clock)
    return head + struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF)


class FrameSender:
    """One connection to a receiver. `addr` is "host:port" or "unix:/path"."""

    def __init__(self, addr, timeout=10.0):
        if addr.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(addr[len("unix:"):])
        else:
            host, _, port = addr.rpartition(":")
            self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Sends block while the rig applies back-pressure; no timeout on them.
        self.sock.settimeout(None)
        self.frames = 0
        self.bytes = 0

    def send_frame(self, img, index, timestamp, plane=0, clock=CLOCK_SENDER):
        """Sends one (height, width) image; it is converted to little-endian u16, row-major."""
        img = np.ascontiguousarray(img, dtype="<u2")
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {img.shape}")
        h, w = img.shape
        head = encode_header(KIND_FRAME, index, timestamp, h, w, plane=plane, clock=clock)
        try:
            self.sock.sendall(head)
            self.sock.sendall(memoryview(img).cast("B"))
        except OSError as e:
            raise ConnectionError(f"{e} (receiver said: {self._reply(0.5)!r})") from e
        self.frames += 1
        self.bytes += len(head) + img.nbytes

    def finish(self, timeout=30.0):
        """Sends end-of-stream; returns the receiver's reply line (e.g. "OK frames=300 rejected=0")."""
        self.sock.sendall(encode_header(KIND_END, self.frames, 0.0, 0, 0, clock=CLOCK_RIG, dtype=0))
        self.bytes += 64
        return self._reply(timeout)

    def _reply(self, timeout):
        self.sock.settimeout(timeout)
        line = b""
        try:
            while not line.endswith(b"\n") and len(line) < 1024:
                b = self.sock.recv(1)
                if not b:
                    break
                line += b
        except OSError:
            pass
        return line.decode("ascii", "replace").strip()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", required=True, help="host:port or unix:/path")
    ap.add_argument("--npy", help="frames to send, shape (n, height, width)")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rate", type=float, default=30.0, help="frames/s; 0 = as fast as possible")
    a = ap.parse_args()

    if a.npy:
        frames = np.load(a.npy, mmap_mode="r")
    else:
        rng = np.random.default_rng(0)
        base = rng.integers(100, 4000, size=(a.height, a.width), dtype=np.uint16)
        frames = (base + (i % 7) for i in range(a.frames))
    t0 = time.monotonic()
    with FrameSender(a.to) as tx:
        for i, img in enumerate(frames):
            if a.rate > 0:
                due = t0 + i / a.rate
                time.sleep(max(0.0, due - time.monotonic()))
            tx.send_frame(img, index=i, timestamp=time.monotonic())
        reply = tx.finish()
        wall = time.monotonic() - t0
    print(f"sent {tx.frames} frames, {tx.bytes / 1e6:.1f} MB in {wall:.2f} s "
          f"({tx.frames / wall:.0f} frames/s, {tx.bytes / 1e6 / wall:.1f} MB/s); receiver: {reply}")
    return 0 if reply.startswith("OK") else 1


if __name__ == "__main__":
    sys.exit(main())
