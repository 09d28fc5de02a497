"""Read TensorFlow 2 checkpoints (the TensorBundle format) without TensorFlow.

A checkpoint ``PREFIX`` is an index ``PREFIX.index`` and data shards
``PREFIX.data-0000K-of-0000N``. The index is a LevelDB-style sorted table
(SSTable) of key -> value:

- the header (key ``""``): a ``BundleHeaderProto`` (num_shards, endianness, version);
- one entry per tensor (key: its name in the object graph): a ``BundleEntryProto``
  (dtype, shape, shard_id, offset, size, crc32c), saying where its raw bytes lie.

The table file: data blocks of prefix-compressed entries with restart points,
an index block whose values are the data blocks' handles, and a 48-byte footer
(the metaindex and index handles as varints, padding, a magic number). Every block
is followed by a compression byte and the masked CRC-32C of block and byte; every
tensor's bytes carry a masked CRC-32C in its entry. Both are checked.

    bundle = read_bundle("ckpt-500")            # the index, checked; no tensor read yet
    kernel = bundle.tensor("network/.../kernel/.ATTRIBUTES/VARIABLE_VALUE")   # checked

Errors (``BundleError``, one line) name the file and, where there is one, the variable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5  # compression type (1 byte) + masked CRC-32C (4 bytes)
# TensorFlow's DataType enum: the numeric types a checkpoint of these models holds.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16}
DTYPE_NAMES = {7: "string", 10: "bool", 14: "bfloat16", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64"}


class BundleError(ValueError):
    """A checkpoint that cannot be read as it should: truncated, foreign, damaged; one line."""


def masked_crc32c(data: bytes) -> int:
    """LevelDB's and TensorFlow's masked CRC-32C: the CRC rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------
# Protocol buffer wire format: the few fields read here.

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of a message: ints for varint/fixed, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies: ``BundleEntryProto``."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None
    slices: tuple = ()   # a tensor saved in parts: each part's (start, length) per dimension, length -1: all


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, _, value in _fields(buf):
        if number == 2:  # TensorShapeProto.dim: Dim.size is field 1
            dims.append(next((v for n, _, v in _fields(value) if n == 1), 0))
        elif number == 3 and value:
            raise ValueError("unknown rank")
    return tuple(dims)


def _parse_entry(buf: bytes) -> Entry:
    fields = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": None, "slices": ()}
    names = {1: "dtype", 3: "shard", 4: "offset", 5: "size", 6: "crc32c"}
    for number, _, value in _fields(buf):
        if number == 2:
            fields["shape"] = _parse_shape(value)
        elif number == 7:  # TensorSliceProto: one Extent (start = 1, length = 2) per dimension
            extents = [{n: v for n, _, v in _fields(e)} for n, _, e in _fields(value) if n == 1]
            fields["slices"] += (tuple((e.get(1, 0), e.get(2, -1)) for e in extents),)
        elif number in names:
            fields[names[number]] = value
    return Entry(**fields)


# A part of a sliced tensor has its own entry, under a key made by TensorFlow's OrderedCode:
# 0, the name, the rank, then each dimension's start and length (checkpoint::EncodeTensorNameSlice).

def _ordered_number(value: int) -> bytes:
    """OrderedCode::WriteNumIncreasing: the byte count, then the bytes, big-endian."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(raw)]) + raw


def _ordered_signed(value: int) -> bytes:
    """OrderedCode::WriteSignedNumIncreasing: a length in the leading bits, then the number."""
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    length = x.bit_length() // 7 + 1
    raw = bytearray(value.to_bytes(10, "big", signed=True)[10 - length:])
    header = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0), (0xFF, 0),
              (0xFF, 0x80), (0xFF, 0xC0)][length]
    raw[0] ^= header[0]
    raw[1] ^= header[1]
    return bytes(raw)


def slice_key(name: str, extents) -> bytes:
    escaped = b"".join(b"\x00\xff" if c == 0 else b"\xff\x00" if c == 0xFF else bytes([c]) for c in name.encode())
    key = _ordered_number(0) + escaped + b"\x00\x01" + _ordered_number(len(extents))
    return key + b"".join(_ordered_signed(start) + _ordered_signed(length) for start, length in extents)


# --------------------------------------------------------------------------
# The table.

def _block(path: Path, data: bytes, handle: bytes, what: str) -> bytes:
    """The checked contents of the block that ``handle`` (two varints: offset, size) points at."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size + BLOCK_TRAILER
    if end > len(data) - FOOTER_SIZE:
        raise BundleError(f"{path}: {what} block lies past the end of the file (truncated?)")
    contents, kind = data[offset:offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if masked_crc32c(data[offset:offset + size + 1]) != stored:
        raise BundleError(f"{path}: {what} block: checksum mismatch (the file is damaged)")
    if kind != 0:
        raise BundleError(f"{path}: {what} block is compressed (type {kind}); TensorFlow writes checkpoints "
                          "uncompressed, so this is not one")
    return contents


def _block_entries(contents: bytes):
    """(key, value) of each entry of a block: keys share a prefix with the previous key."""
    if len(contents) < 4:
        raise ValueError("block too short")
    (num_restarts,) = struct.unpack_from("<I", contents, len(contents) - 4)
    limit = len(contents) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("bad restart array")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(contents, pos)
        unshared, pos = _varint(contents, pos)
        size, pos = _varint(contents, pos)
        if shared > len(key) or pos + unshared + size > limit:
            raise ValueError("entry runs past its block")
        key = key[:shared] + contents[pos:pos + unshared]
        pos += unshared
        yield key, contents[pos:pos + size]
        pos += size


def _read_table(path: Path) -> dict[bytes, bytes]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BundleError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise BundleError(f"{path}: not a TensorFlow checkpoint index (no table footer: truncated or another "
                          "kind of file)")
    footer = data[-FOOTER_SIZE:]
    try:
        _, pos = _varint(footer, 0)   # the metaindex handle: TensorFlow leaves it empty
        _, pos = _varint(footer, pos)
        index = _block(path, data, footer[pos:], "index")
        table = {}
        for _, handle in _block_entries(index):
            for key, value in _block_entries(_block(path, data, handle, "data")):
                table[key] = value
    except ValueError as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"{path}: table is malformed ({err})") from None
    return table


# --------------------------------------------------------------------------
# The bundle.

@dataclass
class Bundle:
    """A checkpoint's index: ``entries`` maps each tensor's name to where it lies."""

    prefix: Path
    num_shards: int
    entries: dict[str, Entry]
    slice_entries: dict[bytes, Entry] = field(default_factory=dict)  # the parts of sliced tensors, by key

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` (a NumPy array of its dtype and shape), its checksum verified."""
        entry = self.entries[name]
        index = Path(f"{self.prefix}.index")
        if entry.dtype not in DTYPES:
            kind = DTYPE_NAMES.get(entry.dtype, f"unknown dtype {entry.dtype}")
            raise BundleError(f"{index}: {name}: holds {kind}, not a number type slotref reads "
                              "(float16/32/64, int32/64)")
        dtype = np.dtype(DTYPES[entry.dtype]).newbyteorder("<")
        if entry.slices:
            return self._assemble(name, entry, dtype)
        return self._read(name, entry, dtype, entry.shape)

    def _assemble(self, name: str, entry: Entry, dtype) -> np.ndarray:
        """A tensor saved in parts (slices), each in its own entry, perhaps in different shards."""
        index = Path(f"{self.prefix}.index")
        full = np.zeros(entry.shape, dtype=dtype.newbyteorder("="))
        covered = 0
        for extents in entry.slices:
            part = self.slice_entries.get(slice_key(name, extents))
            region = tuple(slice(None) if length < 0 else slice(start, start + length) for start, length in extents)
            if part is None or len(extents) != len(entry.shape):
                raise BundleError(f"{index}: {name}: the part {region} is missing (the index is damaged)")
            shape = full[region].shape
            full[region] = self._read(name, part, dtype, shape)
            covered += int(np.prod(shape, dtype=np.int64))
        if covered != full.size:
            raise BundleError(f"{index}: {name}: its parts cover {covered} of {full.size} numbers "
                              "(the index is damaged)")
        return full

    def _read(self, name: str, entry: Entry, dtype, shape) -> np.ndarray:
        index, path = Path(f"{self.prefix}.index"), self.shard_path(entry.shard)
        count = int(np.prod(shape, dtype=np.int64))
        if entry.size != count * dtype.itemsize:
            raise BundleError(f"{index}: {name}: {entry.size} bytes for shape {shape} of {dtype.name} "
                              "(the index is damaged)")
        try:
            with open(path, "rb") as f:
                f.seek(entry.offset)
                raw = f.read(entry.size)
        except OSError as err:
            raise BundleError(f"{path}: {name}: cannot read the data shard ({err.strerror or err})") from None
        if len(raw) != entry.size:
            raise BundleError(f"{path}: {name}: the data shard ends before this tensor (truncated?)")
        if entry.crc32c is not None and masked_crc32c(raw) != entry.crc32c:
            raise BundleError(f"{path}: {name}: checksum mismatch (the data shard is damaged)")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_bundle(prefix) -> Bundle:
    """The index of the checkpoint ``prefix`` (``.../ckpt-500``, its ``.index`` or a shard's name)."""
    prefix = Path(prefix)
    name = prefix.name
    if name.endswith(".index"):
        prefix = prefix.with_name(name[:-len(".index")])
    elif ".data-" in name:
        prefix = prefix.with_name(name[:name.index(".data-")])
    index = Path(f"{prefix}.index")
    if not index.is_file():
        raise BundleError(f"{index}: no such file (give the checkpoint's prefix, e.g. .../ckpt-500)")
    table = _read_table(index)
    if b"" not in table:
        raise BundleError(f"{index}: no bundle header (not a TensorFlow 2 checkpoint index)")
    try:
        header = {number: value for number, _, value in _fields(table.pop(b""))}
        num_shards, big_endian = header.get(1, 0), header.get(2, 0)
        entries, slice_entries = {}, {}
        for key, value in table.items():
            name = key.decode("utf-8", "replace")
            try:
                entry = _parse_entry(value)
            except ValueError as err:
                raise BundleError(f"{index}: {_label(key)}: entry is malformed ({err})") from None
            if key.startswith(b"\x00"):  # a part of a sliced tensor (names never start with a 0 byte)
                slice_entries[key] = entry
            else:
                entries[name] = entry
    except BundleError:
        raise
    except ValueError as err:
        raise BundleError(f"{index}: bundle header is malformed ({err})") from None
    if big_endian:
        raise BundleError(f"{index}: written big-endian; slotref reads little-endian checkpoints")
    for key, entry in [*entries.items(), *slice_entries.items()]:
        if not 0 <= entry.shard < max(num_shards, 1):
            raise BundleError(f"{index}: {_label(key)}: shard {entry.shard} of {num_shards} (the index is damaged)")
    return Bundle(prefix, num_shards, entries, slice_entries)


def _label(key) -> str:
    """A key for a message: a tensor's name as it is, a slice's binary key as Python writes bytes."""
    if isinstance(key, str):
        return key
    return repr(key) if key.startswith(b"\x00") else key.decode("utf-8", "replace")
