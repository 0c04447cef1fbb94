"""Length-prefixed msgpack frames over a socket or a pipe: what the lane speaks."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from typing import Any

from fedcompute.protocol import packb, unpackb

_LENGTH = struct.Struct("!I")
#: A frame larger than this is refused (a result is at most the endpoint's max_result_size).
MAX_FRAME = 1 << 30


def encode(obj: Any) -> bytes:
    data = packb(obj)
    return _LENGTH.pack(len(data)) + data


class SocketFrames:
    """Frames over a connected socket; ``send`` may be called from several threads."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        self._buf = bytearray()

    def send(self, obj: Any) -> None:
        data = encode(obj)
        with self._lock:
            self.sock.sendall(data)

    def recv(self) -> Any:
        """The next frame, or None when the other side closed."""
        while True:
            if len(self._buf) >= 4:
                (length,) = _LENGTH.unpack_from(self._buf)
                if length > MAX_FRAME:
                    raise ValueError(f"frame of {length} bytes refused")
                if len(self._buf) >= 4 + length:
                    data = bytes(self._buf[4:4 + length])
                    del self._buf[:4 + length]
                    return unpackb(data)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self._buf += chunk

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class PipeFrames:
    """Frames over a pair of file descriptors (a child process's private pipes); ``send``
    may be called from several threads, ``recv`` from one."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._lock = threading.Lock()
        self._buf = bytearray()

    def send(self, obj: Any) -> None:
        data = memoryview(encode(obj))
        with self._lock:
            while data:
                data = data[os.write(self.write_fd, data):]

    def _buffered(self) -> int:
        """The length of the whole frame at the head of the buffer, or 0."""
        if len(self._buf) < 4:
            return 0
        (length,) = _LENGTH.unpack_from(self._buf)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes refused")
        return 4 + length if len(self._buf) >= 4 + length else 0

    def ready(self) -> bool:
        """Whether ``recv`` has something at once (a frame, or the first bytes of one)."""
        if self._buffered():
            return True
        return bool(select.select([self.read_fd], [], [], 0)[0])

    def recv(self) -> Any:
        """The next frame, or None when the other side closed."""
        while not (size := self._buffered()):
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        data = bytes(self._buf[4:size])
        del self._buf[:size]
        return unpackb(data)
