"""The journal: append-only files of records in front of the SQLite database.

A change is durable once its record is in a journal file, that is in the kernel's page cache:
the data then survives ``kill -9`` of the daemon (with ``sync=True`` each record is also
flushed to the disk, surviving a power loss). What a record means is the store's business
(``ioasidsd.store.fold``); this module only keeps the bytes.

The journal is a series of segment files in the state directory, ``state.journal.N`` with
``N = 1, 2, ...``, read in that order. The writer appends to the newest; the folder starts a new
segment when it takes the records it is about to fold, and removes the older ones once they are
in the database. The next segment is made ahead of need, as the spare ``state.next-journal``
(the same layout, no records), and given its number when it is taken: making a segment
(reserving its blocks, mapping it) takes milliseconds, naming one only a link. Replay never
reads the spare. A segment is::

    header   8 bytes  magic  b"IOASIDSJ"
             4 bytes  format version (little-endian u32), FORMAT_VERSION
             4 bytes  payload codec (little-endian u32): ``ioasidsd.store.codec``, 2 =
                      MessagePack (written), 1 = Python marshal version 2 (read only)
    record   4 bytes  payload length (little-endian u32), never 0
             4 bytes  CRC-32 of the payload (little-endian u32)
             payload
    record   ...
    zeros    to the end of the file: the room not used yet

A segment is created at its full size with its blocks reserved, and written through a shared
memory mapping (see ``SegmentWriter``): a record is copied into the page cache, its payload
first and then its frame (until the frame is there the record reads as the unwritten end), no
system call. Reading stops at the zeros, or at the first record that is cut short or whose checksum
disagrees: a copy or ``write(2)`` the daemon died in the middle of. Nothing after it in that
segment was acknowledged (a writer that failed goes on in a new segment), so the rest of that
segment is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass
from errno import EFBIG, EINVAL, EIO, ENOSYS, EOPNOTSUPP
from pathlib import Path

from ioasidsd.store import codec as codecs

MAGIC = b"IOASIDSJ"
FORMAT_VERSION = 1
PREFIX = "state.journal."
SEGMENT_BYTES = 4 << 20
"""The size a segment is given at creation (a larger record gets a segment of its own size)."""
SPARE_NAME = "state.next-journal"
"""The file of the spare segment: made ahead of need, empty, not read back (``SegmentWriter``,
``take_number``)."""

_HEADER = struct.Struct("<8sII")
_FRAME = struct.Struct("<II")
_FRAME_PACK = _FRAME.pack
_FRAME_PACK_INTO = _FRAME.pack_into
_FRAME_SIZE = _FRAME.size
_MAX_RECORD = 1 << 32  # a frame's length is a u32
_CRC32 = zlib.crc32
_PAGE = mmap.PAGESIZE
_NAME = re.compile(re.escape(PREFIX) + r"([0-9]{1,18})")


class JournalError(Exception):
    """A journal file that is not ours, or of a format this version cannot read (the message
    names the file)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """What one segment file holds: its records' payloads in order, and why reading stopped
    early (``None`` when the file ends cleanly, or with the zeros of its unwritten end)."""

    number: int
    path: Path
    payloads: list[bytes]
    torn: str | None
    end: int  # the offset just past the last whole record
    codec: int = codecs.WRITTEN  # how its records are written (``ioasidsd.store.codec``)


def segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files in ``directory``, oldest first."""
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = _NAME.fullmatch(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


def read_segment(number: int, path: Path) -> Segment:
    """Read one segment. ``JournalError`` for a file that is not a journal of this format; a
    file shorter than its header (the daemon died creating it) holds no records."""
    data = path.read_bytes()
    if len(data) < _HEADER.size or not any(data[: _HEADER.size]):
        if not data.strip(b"\0"):  # created, not written yet
            return Segment(number, path, [], None, 0)
        if len(data) < _HEADER.size and MAGIC.startswith(data[: len(MAGIC)]):
            return Segment(number, path, [], "an incomplete header", 0)
        raise JournalError(f"{path}: not an ioasidsd journal")
    magic, version, codec = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise JournalError(f"{path}: not an ioasidsd journal")
    if version != FORMAT_VERSION or codec not in codecs.NAMES:
        known = ", ".join(str(number) for number in sorted(codecs.NAMES))
        raise JournalError(f"{path}: journal format {version} (codec {codec}), this ioasidsd "
                           f"reads format {FORMAT_VERSION} (codecs {known})")
    payloads = []
    offset = _HEADER.size
    end = len(data)
    torn = None
    while offset < end:
        if end - offset < _FRAME.size:
            if data.count(0, offset) != end - offset:
                torn = f"a record header cut short at byte {offset}"
            break
        length, crc = _FRAME.unpack_from(data, offset)
        if length == 0:  # the unwritten end of a mapped segment, or a frame cut short
            if data.count(0, offset) != end - offset:
                torn = f"a record header cut short at byte {offset}"
            break
        start = offset + _FRAME.size
        if end - start < length:
            torn = f"a record cut short at byte {offset} ({end - start} of {length} bytes)"
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            torn = f"a record with a bad checksum at byte {offset}"
            break
        payloads.append(payload)
        offset = start + length
    return Segment(number, path, payloads, torn, offset, codec)


def remove(path: Path) -> None:
    """Remove a segment (gone already is fine; ``OSError`` if it cannot be)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class SegmentFull(Exception):
    """A record does not fit in the rest of the segment: go on in a new one, of at least
    ``needed`` bytes."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"{needed} bytes do not fit")
        self.needed = needed


class SegmentWriter:
    """The segment being appended to.

    The file gets its full ``size`` at creation, its blocks reserved (``posix_fallocate``:
    no write into it can find the disk full), and is mapped into memory: appending a record
    copies it into the shared mapping, that is into the kernel's page cache, where it outlives
    the process exactly as data given to ``write(2)`` does, without the cost of a system call
    per record. The unused end of the file reads as zeros. Where the file system cannot
    reserve blocks, records are appended with one ``write(2)`` each on an ``O_APPEND``
    descriptor instead. ``sync`` flushes each record to the disk (``msync``/``fdatasync``) and
    the new file's directory entry.
    """

    def __init__(self, directory: Path, number: int | None, *, sync: bool,
                 size: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.number = number
        self.path = directory / (SPARE_NAME if number is None else f"{PREFIX}{number}")
        self.sync = sync
        if number is None:  # one left by a daemon that died: it holds no records
            remove(self.path)
        self._map: mmap.mmap | None = None
        self._pos = 0
        self._end = size
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            header = _HEADER.pack(MAGIC, FORMAT_VERSION, codecs.WRITTEN)
            try:
                os.posix_fallocate(self._fd, 0, max(size, _PAGE))
            except OSError as exc:
                if exc.errno not in (EOPNOTSUPP, EINVAL, ENOSYS):
                    raise
                fcntl.fcntl(self._fd, fcntl.F_SETFL, os.O_APPEND)
                self._write(header)
            else:
                self._end = max(size, _PAGE)
                self._map = mmap.mmap(self._fd, self._end)
                self._map[: len(header)] = header
                self._pos = len(header)
                if sync:
                    self._map.flush()
            if sync:
                self._sync_directory()
        except OSError:
            self.close()
            remove(self.path)
            raise

    def _sync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @property
    def size(self) -> int:
        """The bytes the file was made with (a segment written with ``write(2)`` grows)."""
        return self._end

    def take_number(self, number: int) -> None:
        """Make the spare (created with ``number=None``, nothing appended yet) segment
        ``number``: its file is named ``state.journal.N`` from now on, a hard link made and
        the spare's name removed, so that a file of that name is never replaced (``OSError``,
        ``EEXIST``), and a daemon that dies in between leaves a segment holding no records
        under both names. With ``sync`` the directory is flushed before this returns.
        ``OSError`` when that cannot be done: the spare is then as it was, or, when only the
        flush failed, named already (``path`` says which); either way it holds no records,
        and the caller removes it."""
        target = self.directory / f"{PREFIX}{number}"
        os.link(self.path, target)
        with contextlib.suppress(OSError):  # a spare's name left behind is replaced later
            os.unlink(self.path)
        self.number, self.path = number, target
        if self.sync:
            self._sync_directory()

    @property
    def mapped(self) -> bool:
        """Whether records are copied into a mapping (else written with ``write(2)``)."""
        return self._map is not None

    def append(self, payload: bytes) -> None:
        """Append one record; when this returns, the record is in the file. ``SegmentFull``
        when it does not fit (nothing was written). ``OSError`` if it could not be written
        whole: the file is cut back to where it was when that is possible, and the caller
        should go on in a new segment."""
        size = len(payload)
        mapping = self._map
        if mapping is None:
            try:
                self._write(_FRAME_PACK(size, _CRC32(payload)) + payload)
            except struct.error:
                raise OSError(EFBIG, f"a journal record of {size} bytes") from None
            return
        start = self._pos
        body = start + _FRAME_SIZE
        end = body + size
        if end > self._end:
            if size >= _MAX_RECORD:
                raise OSError(EFBIG, f"a journal record of {size} bytes")
            raise SegmentFull(_HEADER.size + _FRAME_SIZE + size)
        mapping[body:end] = payload  # the payload first: a frame is valid only once whole
        _FRAME_PACK_INTO(mapping, start, size, _CRC32(payload))
        if self.sync:
            page = start - start % _PAGE
            mapping.flush(page, end - page)
        self._pos = end

    def _write(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(EIO, f"short write to {self.path} ({written} of {len(data)} bytes)")
            if self.sync:
                os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._pos)
            raise
        self._pos += written

    def close(self) -> None:
        """Close the file (it stays, cut to what was written). Idempotent."""
        if self._map is not None:
            with contextlib.suppress(OSError, ValueError):
                self._map.close()
            self._map = None
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._pos)
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
