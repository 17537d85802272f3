"""What happens to a clip after it leaves the model (issue 38): the edits the clip test is measured under.

``attack_clip`` writes a clip's frames to a file after one of ``VIDEO_ATTACKS``: H.264 re-encoding at
a constant rate factor (PyAV's libx264, as platforms re-encode uploads), every other frame dropped,
the middle half of the clip kept, a centre crop resized back, and a frame-rate change (each output
frame the latest input frame at its time, as ffmpeg's ``fps`` filter does). What is not a CRF attack
is written as ``embed`` writes clips (H.264, CRF 18).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..choices import VIDEO_ATTACKS
from ..io.videos import CRF, FPS, save_video

CROP = 0.8  # "crop and resize": the centre 80 % of each side
NEW_FPS = 24  # "frame rate 24": from the model's 16


def attack_clip(frames: torch.Tensor, name: str, path: str | os.PathLike, fps: int = FPS) -> int:
    """Write ``frames`` (F, 3, H, W) in [0, 1], played at ``fps``, to ``path`` (MP4) after attack
    ``name``; return the number of frames written."""
    if name not in VIDEO_ATTACKS:
        raise ValueError(f"attack must be one of {VIDEO_ATTACKS}, got {name!r}")
    crf = int(name.split()[1]) if name.startswith("crf ") else CRF
    f = len(frames)
    if name == "frame drop":
        frames, fps = frames[::2], max(1, fps // 2)
    elif name == "temporal crop":
        frames = frames[f // 4 : f // 4 + max(1, f // 2)]
    elif name == "crop and resize":
        h, w = frames.shape[-2:]
        ch, cw = round(h * CROP), round(w * CROP)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = frames[..., top : top + ch, left : left + cw]
        frames = F.interpolate(crop, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    elif name == "frame rate 24":
        count = max(1, f * NEW_FPS // fps)
        frames, fps = frames[[k * fps // NEW_FPS for k in range(count)]], NEW_FPS
    save_video(frames, path, fps=fps, crf=crf)
    return len(frames)
