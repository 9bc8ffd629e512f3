"""Images and videos for vision-language data: placeholders, paths, checks, frame sampling, and
attaching a row's media to its normalised messages.

Supported input (the LLaVA / Qwen2-VL-Finetune convention): text with `<image>` and `<video>`
placeholders, one per item of the row's `image`/`images` and `video`/`videos` lists (a single
string is a list of one). Paths are absolute, or relative to `data.image_folder` (default: the
folder of the data file). Each placeholder becomes a typed content part where it stood, which is
how processors and trl place images:

    "<image>\\nWhat is this?"  ->  [{"type": "image"}, {"type": "text", "text": "\\nWhat is this?"}]

A video becomes `data.video_max_frames` frames at most, sampled `data.video_fps` times a second
and given to the model as images in a row: trl's trainers pass images (not videos) to the model,
and a sequence of frames is how every image model sees a clip. Videos are decoded with PyAV
(`av`, FFmpeg's libraries bundled in its wheels, no system FFmpeg needed, works on CPU-only
machines and is the backend transformers' own video utilities use); torchvision's video reader
is deprecated and its PyPI wheels need a CUDA build of torch, decord has no recent wheels.

Images need Pillow and videos need PyAV: the `vision` extra (pip install -e '.[vision]').
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from align.data.formats import RowError, type_name
from align.errors import MissingExtraError

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
_PLACEHOLDER = re.compile(r"(<image>|<video>)")
#: Columns that hold a row's media: one path (string) or a list of paths.
IMAGE_COLUMNS = ("image", "images")
VIDEO_COLUMNS = ("video", "videos")
MEDIA_COLUMNS = IMAGE_COLUMNS + VIDEO_COLUMNS


class MediaError(Exception):
    """A problem with one row's media; the data layer adds the source, row and sample id."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


def require_pillow(feature: str = "images in the data") -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise MissingExtraError(feature, "vision", "pillow") from None


def require_av(feature: str = "videos in the data") -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise MissingExtraError(feature, "vision", "av") from None


# --------------------------------------------------------------------------- placeholders


def count_placeholders(text: str) -> tuple[int, int]:
    """(number of `<image>`, number of `<video>`) in a string."""
    return text.count(IMAGE_PLACEHOLDER), text.count(VIDEO_PLACEHOLDER)


def to_parts(content: Any) -> list[dict]:
    """Content (a string with placeholders, or a list of parts) as a list of typed parts.

    `<image>` -> {"type": "image"}; `<video>` -> {"type": "video"} (the data layer expands it
    into one image part per sampled frame). Parts always carry both `type` and `text`, so that
    every row has the same arrow type.
    """
    if not isinstance(content, str):
        return [{"type": p.get("type", "text"), "text": p.get("text")} for p in content]
    parts: list[dict] = []
    for piece in _PLACEHOLDER.split(content):
        if piece == IMAGE_PLACEHOLDER:
            parts.append({"type": "image", "text": None})
        elif piece == VIDEO_PLACEHOLDER:
            parts.append({"type": "video", "text": None})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def mentions_media(value: Any) -> bool:
    """True when text or typed parts anywhere in `value` refer to an image or a video."""
    if isinstance(value, str):
        return IMAGE_PLACEHOLDER in value or VIDEO_PLACEHOLDER in value
    if isinstance(value, Mapping):
        if value.get("type") in ("image", "video"):
            return True
        return any(mentions_media(v) for v in value.values())
    if isinstance(value, list):
        return any(mentions_media(v) for v in value)
    return False


def may_mention_media(dataset, columns: list[str]) -> bool:
    """False when no row of `columns` can refer to media (`mentions_media` is False for every
    row), found with arrow's vectorised string search instead of a python pass; True when one
    may (the caller then scans those rows in python to name the first). Arrow holds the strings
    json parsed, so a row that mentions media is always found; columns of a type this does not
    read count as "may"."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def is_text(kind) -> bool:
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    def found(array: pa.ChunkedArray, pattern: str) -> bool:
        # One RE2 search over each chunk's whole character buffer (viewed, not copied, as a
        # single binary value) instead of one per string: a per-value search costs about 100 ns
        # a row even on a short "role", and RE2 beats match_substring on long text. The buffer
        # may hold bytes of rows outside a slice, and a match may straddle two rows: both only
        # ever add a "may".
        for chunk in array.chunks:
            data = chunk.buffers()[2]
            if data is None or data.size == 0:
                continue
            offsets = pa.array([0, data.size], pa.int64()).buffers()[1]
            whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])
            if pc.match_substring_regex(whole, pattern)[0].as_py():
                return True
        return False

    # Whole columns (chunked arrays), one compute call per nested field: a cached dataset is
    # stored in many small record batches, and a call per batch costs more than the search.
    def may(array: pa.ChunkedArray) -> bool:
        kind = array.type
        if pa.types.is_null(kind) or pa.types.is_boolean(kind) or pa.types.is_integer(kind) \
                or pa.types.is_floating(kind):
            return False
        if isinstance(kind, pa.BaseExtensionType):
            # datasets' Json feature: the JSON text of values of mixed types. A placeholder or a
            # part of type "image"/"video" has the word in it however the text escapes "<".
            storage = pa.chunked_array([c.storage for c in array.chunks], type=kind.storage_type)
            return found(storage, "image|video") if is_text(kind.storage_type) else may(storage)
        if is_text(kind):
            return found(array, f"{IMAGE_PLACEHOLDER}|{VIDEO_PLACEHOLDER}")
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            return may(pc.list_flatten(array))
        if pa.types.is_struct(kind):
            for index in range(kind.num_fields):
                child = pc.struct_field(array, [index])
                if kind.field(index).name == "type" and is_text(child.type) and \
                        pc.any(pc.is_in(child, pa.array(["image", "video"]))).as_py():
                    return True
                if may(child):
                    return True
            return False
        return True

    # Every row of the underlying table: a superset of a selection's rows.
    return any(may(dataset.data.column(column)) for column in columns)


# --------------------------------------------------------------------------- paths and files


def media_list(row: Mapping, columns: tuple[str, ...]) -> tuple[str | None, list]:
    """(the column used, its items as a list) for the first of `columns` present and not null."""
    for column in columns:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, (str, dict)) or _is_pil(value):
            return column, [value]
        if isinstance(value, list):
            return column, value
        raise MediaError(column, f"expected a path or a list of paths, got {type(value).__name__}")
    return None, []


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.")


def resolve(path: str, folder: str | None) -> str:
    """An absolute path: `path` itself if absolute, else joined to `folder`."""
    path = os.path.expanduser(path)
    if os.path.isabs(path) or folder is None:
        return os.path.abspath(path)
    return os.path.abspath(os.path.join(os.path.expanduser(folder), path))


def check_image(item: Any, field: str) -> None:
    """Open and fully decode one image (a path or {bytes, path}); MediaError naming it if not."""
    from PIL import Image

    if _is_pil(item):
        return
    if isinstance(item, dict):
        source, name = (io.BytesIO(item["bytes"]), "embedded image") if item.get("bytes") else (
            item.get("path"), item.get("path"))
    else:
        source, name = item, item
    if isinstance(source, str) and not os.path.isfile(source):
        raise MediaError(field, f"{name}: no such image file")
    try:
        with Image.open(source) as img:
            img.load()  # verify() misses truncated files; a full decode does not
    except Exception as exc:
        raise MediaError(field, f"{name}: unreadable image ({type(exc).__name__}: {exc})") from None


def sample_frames(path: str, fps: float, max_frames: int, field: str = "video") -> list:
    """Frames of a video as PIL images: one every 1/fps seconds, at most `max_frames` (evenly
    spread over the clip when it has more). MediaError naming the file when it cannot be read."""
    import av

    if not os.path.isfile(path):
        raise MediaError(field, f"{path}: no such video file")
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = [(float(f.time or 0.0), f) for f in container.decode(stream)]
            if not frames:
                raise ValueError("no video frames")
            picked, next_t = [], frames[0][0]
            for t, frame in frames:
                if t + 1e-6 >= next_t:
                    picked.append(frame)
                    next_t = t + 1.0 / fps
            if len(picked) > max_frames:
                step = len(picked) / max_frames
                picked = [picked[int(i * step)] for i in range(max_frames)]
            return [f.to_image() for f in picked]
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(field, f"{path}: unreadable video ({type(exc).__name__}: {exc})") from None


def png_bytes(image) -> dict:
    """A PIL image as an `Image` feature value ({bytes, path}) that datasets stores as it is."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def image_feature():
    """The feature of the normalised `images` column: a list of images decoded on access."""
    import datasets

    return datasets.List(datasets.Image())




@dataclass
class Media:
    """How rows' images and videos are handled (vision-language models only)."""

    folder: str | None  # relative paths are joined to this
    video_fps: float
    video_max_frames: int


#: Fields whose text may hold <image>/<video> placeholders (the user side); media in an answer
#: is not something a model generates.
_ANSWER_FIELDS = ("completion", "chosen", "rejected")


def attach_media(out: dict, row: Mapping, media: Media, decode: bool,
                 check_images: bool | None = None) -> dict:
    """Turn a normalised row into its vision-language form: typed parts + an `images` list.

    With decode=False (the report of bad rows) files are opened and checked but videos are not
    sampled into the output; with decode=True (the map pass) video frames become images.
    `check_images` (default: not decode): open and fully decode every image file.
    """
    if check_images is None:
        check_images = not decode

    try:
        image_col, images = media_list(row, IMAGE_COLUMNS)
        video_col, videos = media_list(row, VIDEO_COLUMNS)
    except MediaError as err:
        raise RowError(err.field, err.problem) from None
    if "text" in out:
        if images or videos:
            raise RowError("text", "plain 'text' rows cannot place images; write the rows as "
                                    "'conversations' or 'messages' with <image> placeholders")
        return out

    converted: dict[str, Any] = {}
    order: list[str] = []  # "image" / "video" parts in the order trl fills them
    for name, value in out.items():
        if name not in ("messages", "prompt", "completion", "chosen", "rejected"):
            converted[name] = value
            continue
        if isinstance(value, str):  # a plain prompt/answer becomes one message of typed parts
            value = [{"role": "assistant" if name in _ANSWER_FIELDS else "user", "content": value}]
        messages = []
        for message in value:
            parts = to_parts(message.get("content") or "")
            kinds = [p["type"] for p in parts if p["type"] in ("image", "video")]
            if kinds and name in _ANSWER_FIELDS:
                raise RowError(name, "has an <image>/<video> placeholder; images belong in the prompt")
            order += kinds
            messages.append({**message, "content": parts})
        converted[name] = messages

    n_img, n_vid = order.count("image"), order.count("video")
    if n_img != len(images):
        raise RowError(image_col or "image",
                        f"{n_img} <image> placeholder(s) in the text but {len(images)} image(s) in "
                        f"'{image_col or 'image'}'; put one <image> where each image goes")
    if n_vid != len(videos):
        raise RowError(video_col or "video",
                        f"{n_vid} <video> placeholder(s) in the text but {len(videos)} video(s) in "
                        f"'{video_col or 'video'}'; put one <video> where each video goes")

    def resolved(item, field_):
        if isinstance(item, str):
            return resolve(item, media.folder)
        if isinstance(item, dict) and (item.get("bytes") or item.get("path")):
            return item
        raise RowError(field_, f"expected a path string, got {type_name(item)}")

    image_items = [resolved(i, image_col) for i in images]
    video_paths = [resolved(v, video_col) for v in videos]
    try:
        if check_images:
            for item in image_items:
                check_image(item, image_col)
        frames = []
        for path in video_paths:
            if decode or not os.path.isfile(path):
                frames.append(sample_frames(path, media.video_fps, media.video_max_frames, video_col))
            else:
                frames.append([None])  # checked (decoded) in the map pass; counts stay consistent
    except MediaError as err:
        raise RowError(err.field, err.problem) from None

    # Expand each video part into one image part per frame; list images in part order.
    out_images, next_image, next_video = [], iter(image_items), iter(frames)
    for name in ("messages", "prompt"):
        for message in converted.get(name) or []:
            content = []
            for part in message["content"]:
                if part["type"] == "image":
                    item = next(next_image)
                    out_images.append(item if isinstance(item, dict) else {"bytes": None, "path": item})
                    content.append(part)
                elif part["type"] == "video":
                    clip = next(next_video)
                    out_images += [png_bytes(f) if f is not None else None for f in clip]
                    content += [{"type": "image", "text": None} for _ in clip]
                else:
                    content.append(part)
            message["content"] = content
    converted["images"] = out_images
    return converted

__all__ = [
    "IMAGE_COLUMNS",
    "Media",
    "attach_media",
    "MEDIA_COLUMNS",
    "VIDEO_COLUMNS",
    "MediaError",
    "check_image",
    "count_placeholders",
    "mentions_media",
    "image_feature",
    "may_mention_media",
    "media_list",
    "png_bytes",
    "require_av",
    "require_pillow",
    "resolve",
    "sample_frames",
    "to_parts",
]
