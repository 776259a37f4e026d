"""Reading images from disk with OpenCV: any supported format, 3-channel BGR, EXIF orientation applied.

Which formats OpenCV orients by itself differs between versions, so the orientation tag is read here
(JPEG APP1, PNG eXIf, WebP EXIF) and applied by hand after decoding with IMREAD_IGNORE_ORIENTATION.
OpenCV's TIFF decoder always orients (it ignores that flag; checked with OpenCV 5.0), so TIFFs are
left to it.

Images are files we did not write: only regular files are opened (never a FIFO or a device, which would
block), at most MAX_IMAGE_FILE_BYTES are read, and the size an image's header claims (PNG, JPEG, BMP, GIF,
WebP, TIFF, PNM/PFM: image_size) is checked against utils.limits before anything is decoded, so a
60-byte PNG claiming 60000x60000 pixels costs nothing. Formats we do not parse are left to OpenCV, whose
own pixel limit is set to ours (the OPENCV_IO_MAX_IMAGE_* variables, unless already set) and whose
cv2.error never leaves this module. Every refusal is a reason string naming the problem (read_image).
"""

import os
import stat
import struct

from utils.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

# OpenCV reads these once, at its first decode: unknown formats then meet our bounds too (defence in depth)
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_WIDTH", str(MAX_IMAGE_SIDE))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_HEIGHT", str(MAX_IMAGE_SIDE))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

MAX_IMAGE_FILE_BYTES = 1 << 30  # one image file on disk (an uncompressed 16-bit RGBA TIFF at MAX_IMAGE_PIXELS: 0.7 GB)
JPEG_HEADER_BYTES = 16 << 20  # where a JPEG's frame header (SOFn) is looked for, past its APPn segments

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")

_MAGIC = {  # leading bytes -> format name
    b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"BM": "bmp",
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"II+\x00": "tiff", b"MM\x00+": "tiff", b"GIF8": "gif",
}
_PNM_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"PF", b"Pf")


def sniff_format(head):
    """Actual image format from the first bytes of a file ('jpeg', 'png', ..., or None)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    if head[:2] in _PNM_MAGIC and head[2:3] in (b" ", b"\t", b"\r", b"\n"):
        return "pfm" if head[1:2] in b"Ff" else "pnm"
    return None


def _tiff_orientation(tiff):
    """Orientation tag (0x0112) from a TIFF/EXIF block, or 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(end + "H", tiff[ifd:ifd + 2])
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, typ = struct.unpack(end + "HH", entry[:4])
        if tag == 0x0112 and typ == 3:  # SHORT
            (value,) = struct.unpack(end + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_exif(data):
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no more metadata
            break
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return data[i + 10:i + 2 + length]
        i += 2 + length
    return b""


def _png_exif(data):
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind = data[i + 4:i + 8]
        if kind == b"eXIf":
            return data[i + 8:i + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            break
        i += 12 + length
    return b""


def _webp_exif(data):
    i = 12
    while i + 8 <= len(data):
        kind = data[i:i + 4]
        (length,) = struct.unpack("<I", data[i + 4:i + 8])
        if kind == b"EXIF":
            block = data[i + 8:i + 8 + length]
            return block[6:] if block.startswith(b"Exif\x00\x00") else block
        i += 8 + length + (length & 1)
    return b""


def exif_orientation(data):
    """EXIF orientation (1-8) of an encoded image given as bytes; 1 when there is none."""
    data = bytes(data[:1 << 20])  # metadata sits in the first MiB
    fmt = sniff_format(data[:16])
    try:
        if fmt == "jpeg":
            return _tiff_orientation(_jpeg_exif(data))
        if fmt == "png":
            return _tiff_orientation(_png_exif(data))
        if fmt == "webp":
            return _tiff_orientation(_webp_exif(data))
    except struct.error:
        pass
    return 1


def apply_orientation(im, orientation):
    """Rotate/flip a decoded image so that it displays upright for an EXIF orientation value."""
    if orientation == 2:
        return cv2.flip(im, 1)
    if orientation == 3:
        return cv2.rotate(im, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(im, 0)
    if orientation == 5:
        return cv2.transpose(im)
    if orientation == 6:
        return cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(im), -1)
    if orientation == 8:
        return cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return im


# ---------------------------------------------------------------- image size from the header
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _png_size(b):
    if len(b) < 24 or b[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", b[16:24])


def _jpeg_size(b):
    """Walk the marker segments up to the first frame header (SOFn), as libjpeg does: fill bytes and
    stray bytes between segments are skipped; SOS or EOI before any SOFn means no size."""
    i, n = 2, len(b)
    while i < n:
        if b[i] != 0xFF:  # extraneous bytes before a marker (libjpeg warns and skips them)
            i = b.find(b"\xff", i)
            if i < 0:
                return None
            continue
        while i < n and b[i] == 0xFF:
            i += 1
        if i >= n:
            return None
        m = b[i]
        i += 1
        if m == 0x00 or m == 0x01 or 0xD0 <= m <= 0xD8:  # stuffed byte, TEM, RSTn, SOI: no length
            continue
        if m in (0xD9, 0xDA):
            return None
        if i + 2 > n:
            return None
        (length,) = struct.unpack(">H", b[i:i + 2])
        if length < 2:
            return None
        if m in _SOF:
            if length < 8 or i + 7 > n:
                return None
            h, w = struct.unpack(">HH", b[i + 3:i + 7])
            return w, h
        i += length
    return None


def _bmp_size(b):
    if len(b) < 26:
        return None
    (dib,) = struct.unpack("<I", b[14:18])
    if dib == 12:  # BITMAPCOREHEADER: unsigned 16-bit sides
        return struct.unpack("<HH", b[18:22])
    if dib < 16:
        return None
    w, h = struct.unpack("<ii", b[18:26])
    return abs(w), abs(h)  # a negative height is a top-down bitmap


def _gif_size(b):
    if len(b) < 10 or b[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    return struct.unpack("<HH", b[6:10])


def _webp_size(b):
    kind = b[12:16]
    if kind == b"VP8 " and len(b) >= 30 and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(b) >= 25 and b[20] == 0x2F:
        (bits,) = struct.unpack("<I", b[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(b) >= 30:
        return (int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1)
    return None


_TIFF_INT = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)


def _tiff_size(b):
    """ImageWidth (256) and ImageLength (257) of the first IFD (classic TIFF or BigTIFF)."""
    end = "<" if b[:2] == b"II" else ">"
    big = b[2:4] in (b"+\x00", b"\x00+")
    if big:
        ifd, count_fmt, entry, value_at = struct.unpack(end + "Q", b[8:16])[0], "Q", 20, 12
    else:
        ifd, count_fmt, entry, value_at = struct.unpack(end + "I", b[4:8])[0], "H", 12, 8
    head = struct.calcsize(count_fmt)
    if ifd < 8 or ifd + head > len(b):
        return None
    (count,) = struct.unpack(end + count_fmt, b[ifd:ifd + head])
    sides = {}
    for k in range(min(count, 4096)):
        at = ifd + head + entry * k
        if at + entry > len(b):
            break
        tag, typ = struct.unpack(end + "HH", b[at:at + 4])
        if tag in (256, 257) and typ in _TIFF_INT:
            fmt = end + _TIFF_INT[typ]
            sides[tag] = struct.unpack(fmt, b[at + value_at:at + value_at + struct.calcsize(fmt)])[0]
            if len(sides) == 2:
                return sides[256], sides[257]
    return None


def _pnm_size(b):
    """Width and height after the magic of a PNM (P1-P6), PAM (P7: WIDTH/HEIGHT lines) or PFM header."""
    text = bytes(b[:4096])
    if text[:2] == b"P7":
        sides = {}
        for line in text.split(b"\n")[1:64]:
            parts = line.split()
            if len(parts) == 2 and parts[0] in (b"WIDTH", b"HEIGHT") and parts[1].isdigit():
                sides[parts[0]] = int(parts[1])
            if parts[:1] == [b"ENDHDR"]:
                break
        return (sides[b"WIDTH"], sides[b"HEIGHT"]) if len(sides) == 2 else None
    tokens = []
    for line in text[2:].split(b"\n")[:-1] if b"\n" in text[2:] else []:
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            break
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    return int(tokens[0]), int(tokens[1])


_SIZE_READERS = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "gif": _gif_size, "webp": _webp_size,
                 "tiff": _tiff_size, "pnm": _pnm_size, "pfm": _pnm_size}


def image_size(data):
    """(width, height) an encoded image's header claims, from its first bytes (bytes or np.uint8 array);
    None when the format is not one we parse or its header is truncated or malformed.

    Nothing is decoded: PNG IHDR, JPEG SOFn, BMP, GIF, WebP VP8/VP8L/VP8X, TIFF's first IFD, PNM/PFM."""
    fmt = sniff_format(bytes(data[:16]))
    reader = _SIZE_READERS.get(fmt)
    if reader is None:
        return None
    if fmt == "jpeg":
        b = bytes(data[:JPEG_HEADER_BYTES])
    elif fmt == "tiff":
        b = memoryview(data if isinstance(data, bytes) else np.ascontiguousarray(data, np.uint8)).cast("B")
    else:
        b = bytes(data[:4096])
    try:
        size = reader(b)
    except (struct.error, ValueError, IndexError):
        return None
    return None if size is None else (int(size[0]), int(size[1]))


def size_problem(w, h):
    """Why an image of w x h pixels is refused ('WxH pixels, over the limit of ...'), or None when it is
    within utils.limits."""
    if w <= 0 or h <= 0:
        return f"{w}x{h} pixels, an empty image"
    if w > MAX_IMAGE_SIDE or h > MAX_IMAGE_SIDE or w * h > MAX_IMAGE_PIXELS:
        return f"{w}x{h} pixels, over the limit of {MAX_IMAGE_SIDE:,} a side and {MAX_IMAGE_PIXELS:,} in all"
    return None


# ---------------------------------------------------------------- reading and decoding
def file_kind(mode):
    """'FIFO', 'socket', 'character device', ... for a non-regular file's st_mode."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(st):
    """Why a file with this os.stat result is not read ('is a directory', 'is not a regular file (FIFO), not
    read'), or None for a regular file."""
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    return f"is not a regular file ({file_kind(st.st_mode)}), not read"


def read_regular(path, limit):
    """Bytes of a regular file of at most ``limit`` bytes -> (bytes or None, os.stat_result or None, problem).

    The file is opened without blocking (O_NONBLOCK: a FIFO would wait for a writer) and checked with
    fstat before anything is read, so a file swapped for a FIFO after a listing cannot hang us.
    problem: None when read; 'missing' when it does not exist; else a reason."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        if not hasattr(os, "O_NONBLOCK"):  # no non-blocking open here: look before opening
            st = os.stat(path)
            if problem := _not_regular(st):
                return None, st, problem
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None, None, "missing"
    except IsADirectoryError:
        return None, None, "is a directory"
    except OSError as e:
        return None, None, f"unreadable ({e.strerror or e})"
    try:
        st = os.fstat(fd)
        if problem := _not_regular(st):
            return None, st, problem
        if st.st_size > limit:
            return None, st, f"file of {st.st_size:,} bytes is over the limit of {limit:,}"
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, max(st.st_size + 1, 1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # grew while we read
            return None, st, f"file of more than {limit:,} bytes is over the limit"
        return data, st, None
    except OSError as e:
        return None, None, f"unreadable ({e.strerror or e})"
    finally:
        os.close(fd)


def read_image_bytes(path):
    """Encoded bytes of an image file as np.uint8 -> (array or None, problem or None)."""
    data, st, problem = read_regular(path, MAX_IMAGE_FILE_BYTES)
    if problem == "missing":
        return None, "does not exist"
    if problem == "is a directory":
        return None, "is a directory, not an image"
    if problem:
        return None, problem
    if not data:
        return None, "empty file (0 bytes)"
    return np.frombuffer(data, np.uint8), None


def decode_checked(data):
    """Encoded bytes -> (BGR uint8 (H, W, 3) upright, None) or (None, why it was refused).

    The header's claimed size is checked first (a known format without a readable size is refused); any
    cv2.error is a refusal too; a decoded image over the limits (a format we do not parse) is dropped."""
    if data is None or len(data) == 0:
        return None, "empty file (0 bytes)"
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, np.uint8)
    fmt = sniff_format(bytes(data[:16]))
    if fmt in _SIZE_READERS:
        size = image_size(data)
        if size is None:
            return None, f"not a decodable image (no image size in its {fmt.upper()} header)"
        problem = size_problem(*size)
        if problem:
            return None, f"its header claims {problem}, not decoded"
    try:
        im = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:
        return None, f"not a decodable image (OpenCV: {cv_error_reason(e)})"
    if im is None or im.ndim < 2 or im.size == 0:
        return None, "not a decodable image"
    problem = size_problem(im.shape[1], im.shape[0])
    if problem:
        return None, f"decoded to {problem}"
    try:
        return apply_orientation(im, exif_orientation(data)), None
    except cv2.error as e:
        return None, f"not a decodable image (OpenCV: {cv_error_reason(e)})"


def cv_error_reason(e):
    """The last line of a cv2.error, short."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def read_image(path):
    """Read an image file -> (BGR uint8 (H, W, 3) upright, None) or (None, the reason it was refused)."""
    data, problem = read_image_bytes(path)
    if data is None:
        return None, problem
    return decode_checked(data)


def imread(path):
    """Read an image file as upright BGR uint8 (H, W, 3); None when missing, not a regular file, empty,
    undecodable, or larger than utils.limits allows (read_image says which)."""
    return read_image(path)[0]
