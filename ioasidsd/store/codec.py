"""A journal record's bytes: how the operations of ``ioasidsd.store.fold`` are written down.

A segment's header names the codec of all its records (``ioasidsd.store.journal``), so that a
reader knows what it holds before it reads a record:

``CODEC_MSGPACK`` (2), what this version writes
    A record is one MessagePack array (https://msgpack.org): the list of operations, each an
    array whose first element is the operation's code (``fold.META``, ``fold.CGROUP``...). The
    format is self-describing and independent of the Python that wrote it: integers, floats,
    ``nil``, booleans, arrays, maps with string keys, ``bin`` for raw bytes (the IDs of a
    ``SET_IOASIDS`` group: little-endian u32s) and ``str`` for text. Text keeps any code
    point Python holds, surrogates included (a release agent read with ``surrogateescape``):
    they are written as their three UTF-8-like bytes (Python's ``surrogatepass``).

``CODEC_MARSHAL_2`` (1), what versions before it wrote: read, never written
    The same list of operations in Python's ``marshal`` format, version 2. ``marshal`` makes no
    promise across Python versions, but its version-2 encoding of the few types a record uses
    (tuples, lists, dicts, strings, bytes, integers, floats, booleans, ``None``) has not changed
    in any Python that can run this project, so a journal left by an older daemon is replayed
    as it is. A record this Python cannot read is refused with ``RecordError``, whose message
    says the way out: start the version of ioasidsd that wrote it and stop it cleanly (a clean
    stop folds the journal into the database and removes it).

Decoding gives tuples for arrays, as ``marshal`` did: operations and their fields compare and
hash the same whichever codec wrote them.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import Any

import msgpack

CODEC_MARSHAL_2 = 1
CODEC_MSGPACK = 2
WRITTEN = CODEC_MSGPACK
"""The codec of every segment this version creates."""

NAMES = {CODEC_MARSHAL_2: "Python marshal, version 2", CODEC_MSGPACK: "MessagePack"}
"""The codecs this version reads, by number."""

Op = tuple[Any, ...]


class RecordError(Exception):
    """A record that its codec cannot decode, or that is not a list of operations (the message
    says why and what to do)."""


_packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogatepass", autoreset=True)


def encode(ops: list[Op]) -> bytes:
    """``ops`` as a record of the codec this version writes (``WRITTEN``). ``RecordError`` for
    a value MessagePack cannot hold (a type of its own, an integer beyond 64 bits)."""
    try:
        return _packer.pack(ops)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError(f"a journal record cannot be written ({exc})") from None


def _from_msgpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, use_list=False, raw=False, strict_map_key=False,
                           unicode_errors="surrogatepass")


_DECODERS: dict[int, Callable[[bytes], Any]] = {CODEC_MSGPACK: _from_msgpack,
                                                CODEC_MARSHAL_2: marshal.loads}


def decode(codec: int, payload: bytes) -> Sequence[Op]:
    """The operations of a record of ``codec`` (one of ``NAMES``). ``RecordError`` when it
    cannot be decoded or is not a sequence of operations; ``KeyError`` for a codec not in
    ``NAMES`` (``journal.read_segment`` refuses those first)."""
    decoder = _DECODERS[codec]
    try:
        ops = decoder(payload)
    except Exception as exc:  # each decoder raises its own kinds (ValueError, EOFError...)
        way_out = ""
        if codec == CODEC_MARSHAL_2:
            way_out = ("; it was written by an older ioasidsd under another Python: start that "
                       "version and stop it cleanly, which folds its journal into the database")
        raise RecordError(f"a journal record in {NAMES[codec]} cannot be read "
                          f"({type(exc).__name__}: {exc}){way_out}") from None
    if not isinstance(ops, list | tuple):
        raise RecordError("a journal record is not a list of operations")
    return ops


def decode_all(codec: int, payloads: Sequence[bytes]) -> Iterator[Sequence[Op]]:
    """The operations of each record of ``payloads`` (all of ``codec``), in order: what
    ``decode`` gives for each, read in one pass where the codec allows it (a MessagePack
    stream: a quarter of the CPU of decoding the records one by one, which the folder does for
    every change). ``RecordError`` as ``decode`` gives it for the first record that cannot be
    read; the records before it have been given by then."""
    if codec != CODEC_MSGPACK or len(payloads) < 2:
        for payload in payloads:
            yield decode(codec, payload)
        return
    data = b"".join(payloads)
    unpacker = msgpack.Unpacker(use_list=False, raw=False, strict_map_key=False,
                                unicode_errors="surrogatepass",
                                max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    tell = unpacker.tell
    done = 0
    try:
        for end, ops in zip(accumulate(map(len, payloads)), unpacker, strict=True):
            if tell() != end or not isinstance(ops, list | tuple):
                break  # not one whole record: the record's own decoding says why
            yield ops
            done += 1
    except Exception:  # the record's own decoding below says why
        pass
    for payload in payloads[done:]:  # only after a record the stream could not read
        yield decode(codec, payload)
