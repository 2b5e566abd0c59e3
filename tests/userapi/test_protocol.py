"""The socket framing: requests split, joined, oversized."""

from __future__ import annotations

from ioasidsd.userapi import protocol


def frames(*pairs: tuple[int, bytes]) -> bytes:
    return b"".join(protocol.request(cmd, arg) for cmd, arg in pairs)


def test_whole_request_in_one_read() -> None:
    reader = protocol.RequestReader()
    assert reader.feed(memoryview(protocol.request(7, b"abcd"))) == [(7, b"abcd")]
    assert reader.pending == 0


def test_requests_split_and_joined_anywhere() -> None:
    data = frames((1, b""), (2, b"x" * 16), (3, b"yz"))
    for cut in range(len(data) + 1):
        reader = protocol.RequestReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == [(1, b""), (2, b"x" * 16), (3, b"yz")], cut
        assert reader.pending == 0
    reader = protocol.RequestReader()
    got = [r for byte in range(len(data)) for r in reader.feed(data[byte:byte + 1])]
    assert got == [(1, b""), (2, b"x" * 16), (3, b"yz")]


def test_oversized_request_is_skipped_in_order() -> None:
    big = protocol.MAX_ARG + 5
    data = frames((1, b"a")) + protocol.REQUEST.pack(2, big) + b"\0" * big + frames((3, b"c"))
    reader = protocol.RequestReader()
    got = []
    for start in range(0, len(data), 100_000):
        got += reader.feed(data[start:start + 100_000])
    assert got == [(1, b"a"), (2, None), (3, b"c")]
    assert reader.pending == 0


def test_replies() -> None:
    assert protocol.reply(5) == protocol.REPLY.pack(5, 0)
    frame = protocol.error_reply(11, "x" * 2000)
    ret, length = protocol.REPLY.unpack_from(frame)
    assert ret == -11 and length == protocol.MAX_MESSAGE == len(frame) - protocol.REPLY.size
