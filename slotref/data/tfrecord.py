"""TFRecord files of ``tf.train.Example``, read without TensorFlow.

A TFRecord file is a sequence of frames
``uint64 length | masked crc32c(length) | data | masked crc32c(data)``. The
``tfrecord`` PyPI package reads that framing, but it ships as an sdist only,
never checks either CRC (it reads and discards them), and bundles an
``example_pb2`` generated for an old protobuf. The framing is four lines, so it
is read here, both CRCs are verified with ``google-crc32c`` (Google's own,
C-accelerated wheels), and ``tf.train.Example`` is decoded with the
``protobuf`` runtime from the five message types built from descriptors in code
(the messages of TensorFlow's ``example.proto``/``feature.proto``). Both
packages are imported lazily: CLEVR conversion needs neither.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from slotref.data.errors import ConvertError

MAX_RECORD_BYTES = 2**28  # one TFRecord record; clevr_with_masks records are about 3 MB

def _masked_crc(data):
    """TFRecord's masked CRC-32C: rotate right by 15 and add a constant."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path, start=0):
    """Yield (record index, payload bytes) of a TFRecord file, verifying both CRCs.

    GZIP-compressed and plain files are both accepted (by the gzip magic).
    Records before ``start`` are framed and checked but not returned.
    Memory: one record at a time.
    """
    path = str(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    size = os.path.getsize(path)
    opener = gzip.open if gzipped else open
    index = 0
    try:
        with opener(path, "rb") as fh:
            while True:
                header = fh.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise ConvertError(f"{path}: record {index}: truncated header")
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:])
                if _masked_crc(header[:8]) != length_crc:
                    raise ConvertError(f"{path}: record {index}: bad length CRC (corrupt file)")
                # Checked before reading: a damaged header must not become a huge allocation.
                if length > MAX_RECORD_BYTES:
                    raise ConvertError(f"{path}: record {index}: header claims {length:,} bytes, more than the "
                                       f"{MAX_RECORD_BYTES:,} a record may have (corrupt file?); use the original file")
                if not gzipped and length + 4 > size - fh.tell():
                    raise ConvertError(f"{path}: record {index}: truncated (header claims {length:,} bytes, the file "
                                       f"holds {size - fh.tell():,} more); use the original file")
                data = fh.read(length)
                footer = fh.read(4)
                if len(data) < length or len(footer) < 4:
                    raise ConvertError(f"{path}: record {index}: truncated (file ends inside the record)")
                if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                    raise ConvertError(f"{path}: record {index}: bad data CRC (corrupt file)")
                if index >= start:
                    yield index, data
                index += 1
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ConvertError(f"{path}: record {index}: unreadable gzip stream ({e})") from None


_EXAMPLE_CLASS = None


def _example_class():
    """tf.train.Example as a protobuf message class, built from descriptors.

    Same field numbers as TensorFlow's core/example/{feature,example}.proto, in
    a private descriptor pool so it cannot clash with an installed TensorFlow.
    """
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is not None:
        return _EXAMPLE_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="slotref_tf_example.proto", package="tensorflow",
                                             syntax="proto3")

    def message(name, fields, nested=()):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None, None)])
    feature = message("Feature", [
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0),
    ])
    feature.oneof_decl.add(name="kind")
    features = message("Features", [
        ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None),
    ])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None)])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("tensorflow.Example")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        _EXAMPLE_CLASS = message_factory.GetMessageClass(descriptor)
    else:
        _EXAMPLE_CLASS = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return _EXAMPLE_CLASS


def parse_example(data):
    """Serialized tf.train.Example -> {key: bytes | float32 array | int64 array}.

    A bytes feature is returned as the concatenation of its values: DeepMind's
    files store images and masks as one 1-byte string per element (their
    readers use ``FixedLenFeature(shape, tf.string)`` then ``decode_raw``).
    """
    from google.protobuf.message import DecodeError

    example = _example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError as e:
        raise ConvertError(f"not a tf.train.Example ({e})") from None
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = b"".join(feature.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, np.int64)
        else:
            out[key] = None
    return out

