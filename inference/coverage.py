"""Do a PNG's or a JPEG's compressed data cover the size their header declares?

Most decoders fail on data that stop early, but two do not when the data stop *properly*: zlib in a PNG whose
compressed stream ends (with its end code) before the last row, and libjpeg in a JPEG whose scan ends (at a marker)
before the last block. Both then fill the rest with zeros, black or flat grey, and say nothing; a 6600×6000 header
over a 32×32 scan decodes as a grey picture that a classifier labels with confidence. These checks read the file's
structure only, never its pixels, and answer False only when the data cannot possibly cover the declared size;
None means "not a file this check understands" (the decoder then has the last word).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_STEP = 2**20  # bytes of decompressed rows held at a time while counting them

JPEG_SOI, JPEG_EOI, JPEG_SOS = 0xD8, 0xD9, 0xDA
HUFFMAN_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential DCT
HUFFMAN_PROGRESSIVE = 0xC2
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0..7 carry no length
# Bytes put where a single-scan JPEG's end-of-image marker was (see `jpeg_without_end_marker`).
END_PADDING = bytes(16)


# --- PNG ------------------------------------------------------------------------------------------


def png_data_cover_size(data: bytes) -> bool | None:
    """Whether the IDAT stream decompresses to at least the rows that IHDR's width, height, depth, colour type and
    interlacing need (the first frame of an APNG is the IDAT image too). Counted in steps of a megabyte, so the
    check holds one step of rows at a time, never the image."""
    header = _png_header(data)
    if header is None:
        return None
    width, height, bit_depth, colour_type, interlace = header
    needed = _png_raw_size(width, height, bit_depth * PNG_CHANNELS.get(colour_type, 0), interlace)
    stream = zlib.decompressobj()
    produced = 0
    try:
        for chunk in _png_idat_chunks(data):
            pending = chunk
            while pending and produced < needed:
                produced += len(stream.decompress(pending, INFLATE_STEP))
                pending = stream.unconsumed_tail
            if produced >= needed or stream.eof:
                break
    except zlib.error:
        return None  # corrupt, not short: the decoder says so in its own words
    return produced >= needed


def _png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 29:
        return None
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in PNG_CHANNELS or not width or not height:
        return None
    return width, height, bit_depth, colour_type, interlace


def _png_idat_chunks(data: bytes):
    view, position = memoryview(data), len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"IEND":
            return
        if kind == b"IDAT":
            yield view[position + 8:position + 8 + length]
        position += 12 + length  # length, type, data, CRC


def _png_raw_size(width: int, height: int, bits_per_pixel: int, interlace: int) -> int:
    """Bytes of filtered rows (one filter byte each) that the image needs, for all seven passes when interlaced."""
    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits_per_pixel + 7) // 8) if w and h else 0

    if not interlace:
        return rows(width, height)
    return sum(rows(math.ceil(max(0, width - x0) / dx), math.ceil(max(0, height - y0) / dy))
               for x0, y0, dx, dy in ADAM7_PASSES)


# --- JPEG -----------------------------------------------------------------------------------------


@dataclass
class JpegScan:
    components: list[int]  # component ids
    spectral_start: int  # Ss: 0 for a scan that codes the DC coefficients (every sequential scan does)
    data_bytes: int  # length of its entropy-coded data


@dataclass
class JpegLayout:
    frame: int  # the SOF marker: 0xC0 baseline, 0xC2 progressive, ...
    width: int
    height: int
    sampling: dict[int, tuple[int, int]]  # component id → (horizontal, vertical) sampling factors
    scans: list[JpegScan]
    end_marker: int | None  # offset of the primary image's EOI marker; None when the file has none

    def blocks(self, component: int) -> int:
        """8×8 blocks of one component (before MCU padding: the fewest any coder must code)."""
        h, v = self.sampling[component]
        h_max = max(s[0] for s in self.sampling.values())
        v_max = max(s[1] for s in self.sampling.values())
        return math.ceil(math.ceil(self.width * h / h_max) / 8) * math.ceil(math.ceil(self.height * v / v_max) / 8)


def jpeg_data_cover_size(data: bytes) -> bool | None:
    """False when some component's DC coefficients cannot all be in the file. A Huffman code is at least one bit
    long, and every block's DC difference (or, in a refinement scan, its correction bit) takes one, so the DC
    scans of a component hold at least one bit per block. Arithmetic-coded and lossless JPEGs have no such bound
    (None); neither does a short scan that stays above it (see `jpeg_without_end_marker` for those)."""
    layout = jpeg_layout(data)
    if layout is None or layout.frame not in (*HUFFMAN_SEQUENTIAL, HUFFMAN_PROGRESSIVE) or not layout.height:
        return None
    for component in layout.sampling:
        dc_scans = [s for s in layout.scans if s.spectral_start == 0 and component in s.components]
        if not dc_scans:
            return False
        bits = 8 * sum(s.data_bytes for s in dc_scans)
        if bits < sum(layout.blocks(c) for s in dc_scans for c in s.components):
            return False
    return True


def jpeg_without_end_marker(data: bytes) -> bytes:
    """A single-scan sequential JPEG with its end-of-image marker (and anything after it) replaced by zero bytes.

    libjpeg that meets the marker before the last block fills the rest with grey and only warns; with zero bytes
    instead it reads on, runs out of data and Pillow reports the file as truncated. A complete scan never reads
    them: the decoder has every row before it looks for the marker, and the same pixels come out. Multi-scan and
    progressive files are buffered whole before any row is made and so need the real marker; they are returned
    unchanged (`jpeg_data_cover_size` still bounds them)."""
    layout = jpeg_layout(data)
    if (layout is None or layout.frame not in HUFFMAN_SEQUENTIAL or len(layout.scans) != 1 or not layout.height
            or layout.end_marker is None):
        return data
    return data[:layout.end_marker] + END_PADDING


def jpeg_layout(data: bytes) -> JpegLayout | None:
    """The frame, the scans and where the image ends, from the markers; None for anything that does not parse."""
    if data[:2] != b"\xff\xd8":
        return None
    frame, scans, position = None, [], 2
    while position < len(data) - 1:
        if data[position] != 0xFF:
            return None
        while position < len(data) and data[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= len(data):
            return None
        marker, start = data[position], position - 1
        position += 1
        if marker == JPEG_EOI:
            return _layout(frame, scans, start)
        if marker in STANDALONE_MARKERS:
            continue
        if position + 2 > len(data):
            return None
        length = struct.unpack(">H", data[position:position + 2])[0]
        segment = data[position + 2:position + length]
        position += length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            frame = _frame(marker, segment)
        elif marker == JPEG_SOS:
            end = _entropy_data_end(data, position)
            scans.append(_scan(segment, end - position))
            position = end
    return _layout(frame, scans, None)


def _layout(frame, scans: list[JpegScan], end_marker: int | None) -> JpegLayout | None:
    if frame is None:
        return None
    marker, width, height, sampling = frame
    return JpegLayout(marker, width, height, sampling, scans, end_marker)


def _frame(marker: int, segment: bytes):
    if len(segment) < 6:
        return None
    _, height, width, count = struct.unpack(">BHHB", segment[:6])
    sampling = {}
    for i in range(count):
        entry = segment[6 + 3 * i:9 + 3 * i]
        if len(entry) < 3 or not entry[1] >> 4 or not entry[1] & 15:
            return None
        sampling[entry[0]] = (entry[1] >> 4, entry[1] & 15)
    return (marker, width, height, sampling) if sampling and width else None


def _scan(segment: bytes, data_bytes: int) -> JpegScan:
    count = segment[0] if segment else 0
    components = [segment[1 + 2 * i] for i in range(count) if 1 + 2 * i < len(segment)]
    spectral_start = segment[1 + 2 * count] if 1 + 2 * count < len(segment) else 0
    return JpegScan(components, spectral_start, data_bytes)


def _entropy_data_end(data: bytes, position: int) -> int:
    """Offset of the marker that ends the entropy-coded data starting at `position` (stuffed 0xFF00 bytes,
    restart markers and fill bytes are part of the data)."""
    while True:
        found = data.find(b"\xff", position)
        if found < 0 or found + 1 >= len(data):
            return len(data)
        following = data[found + 1]
        if following == 0 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position = found + 1 if following == 0xFF else found + 2
            continue
        return found
