"""Reading images from disk with OpenCV: any supported format, 3-channel BGR, EXIF orientation applied.

Which formats OpenCV orients by itself differs between versions, so the orientation tag is read here
(JPEG APP1, PNG eXIf, WebP EXIF) and applied by hand after decoding with IMREAD_IGNORE_ORIENTATION.
OpenCV's TIFF decoder always orients (it ignores that flag; checked with OpenCV 5.0), so TIFFs are
left to it.
"""

import struct

import cv2
import numpy as np

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")

_MAGIC = {  # leading bytes -> format name
    b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"BM": "bmp",
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"GIF8": "gif",
}


def sniff_format(head):
    """Actual image format from the first bytes of a file ('jpeg', 'png', ..., or None)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
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


def decode_image(data):
    """Encoded bytes (np.uint8 array) -> BGR uint8 (H, W, 3), upright; None when undecodable."""
    if data is None or len(data) == 0:
        return None
    im = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if im is None:
        return None
    return apply_orientation(im, exif_orientation(data))


def imread(path):
    """Read an image file as upright BGR uint8 (H, W, 3); None when missing, empty or undecodable."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    return decode_image(data)
