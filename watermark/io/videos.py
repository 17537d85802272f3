"""Video files, through PyAV (FFmpeg's libraries): reading a suspect clip as a tensor, writing the
clips ``embed`` makes. MP4 is H.264 (yuv420p, CRF 18, what players and platforms take); the
lossless option is FFV1 in Matroska (RGB kept exactly). Errors are ``ImageError``s, one line each,
as for images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import (MIN_SIDE, MODEL_TAG, VIDEO_SUFFIXES, ImageError, Loaded, check_file, load_image,
                     resize_warning, to_tensor)

MAX_FRAMES = 241  # frames read from one clip (15 s at 16 fps); a longer one is tested on its first MAX_FRAMES (said in its note)
FPS = 16  # Wan 2.1's frame rate
CRF = 18


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def load_input(path: str | os.PathLike, size: int, video: bool) -> Loaded:
    """An image or a clip as the keys' model takes it: for a video model (``video``), a clip
    (3, F, size, size), an image being a clip of one frame; for an image model, an image (a video
    file is refused: its keys were made for images)."""
    if is_video(path):
        if not video:
            raise ImageError("a video file; the keys are for an image model (verify clips with a video model's keys)")
        return load_video(path, size)
    loaded = load_image(str(path), size)
    if video:
        loaded.image = loaded.image[:, None]
        loaded.note = "; ".join(n for n in ("an image: a clip of 1 frame", loaded.note) if n)
    return loaded


def _av():
    try:
        import av
    except ImportError:
        raise ImageError("reading and writing video needs PyAV: pip install 'ringmark[video]'") from None
    return av


def load_video(path: str | os.PathLike, size: int) -> Loaded:
    """Read a clip as (3, F, size, size) in [-1, 1], every frame resized (bicubic) if needed."""
    av = _av()
    p = check_file(path)
    notes = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise ImageError("the file holds no video stream")
            tags = {k.lower(): v for k, v in container.metadata.items()}  # Matroska's tags are upper case
            comment = tags.get("comment", "")
            made_by = comment[len(MODEL_TAG) + 1 :] if comment.startswith(MODEL_TAG + "=") else None
            frames = []
            for frame in container.decode(video=0):
                if len(frames) == MAX_FRAMES:
                    notes.append(f"first {MAX_FRAMES} frames")
                    break
                frames.append(frame.to_image())
    except ImageError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        msg = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ImageError(f"not a video PyAV can read ({msg})") from None
    if not frames:
        raise ImageError("the video stream holds no frames")
    w, h = frames[0].size
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"video is {w}x{h}; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    warning = None
    if (w, h) != (size, size):
        notes.append(f"resized from {w}x{h}")
        frames = [f.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for f in frames]
        warning = resize_warning(w, h, size, "video")
    clip = to_tensor([f.convert("RGB") for f in frames]).transpose(0, 1)  # (3, F, H, W)
    notes.insert(0, f"{len(frames)} frames")
    return Loaded(clip, "; ".join(notes), warning, made_by)


def save_video(clip01: torch.Tensor, path: str | os.PathLike, fps: int = FPS, lossless: bool = False,
               model: str | None = None, crf: int = CRF) -> None:
    """(F, 3, H, W) in [0, 1] -> H.264 MP4 at ``crf``, or with ``lossless`` FFV1 in Matroska; ``model``
    goes into the container's metadata (``ringmark:model``, as the PNG text chunk of images)."""
    av = _av()
    a = (clip01.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    with av.open(str(path), "w", format="matroska" if lossless else "mp4") as container:
        if model is not None:
            container.metadata["comment"] = f"{MODEL_TAG}={model}"
        stream = container.add_stream("ffv1" if lossless else "libx264", rate=fps)
        stream.width, stream.height = a.shape[2], a.shape[1]
        stream.pix_fmt = "bgr0" if lossless else "yuv420p"
        if not lossless:
            stream.options = {"crf": str(crf)}
        for frame in a:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
