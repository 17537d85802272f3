"""inversion_video.json/.md from the two cost runs of 2026-12-03 (issue 38): all four methods at
64 px and 1, 5, 9, 17 frames (``ringmark bench inversion --video``), and the fixed point and the
gradient method at 128 px and 1, 5 frames (``size128.json``, the same ``video_inversion.cost``),
so that the fit separates the memory that grows with pixels from the constant part.

    python docs/bench/video/merge.py
"""

import json
from pathlib import Path

from watermark.bench import video_inversion

here = Path(__file__).parent
res = json.loads((here / "inversion_video.json").read_text())
extra = json.loads((here / "size128.json").read_text())
if "commands" not in res:
    res["commands"] = [res.pop("command"), extra["command"]]
    res["cost"] += extra["rows"]
res["fits"] = video_inversion.fits(res["cost"])
(here / "inversion_video.json").write_text(json.dumps(res, indent=1) + "\n")
text = "\n".join([f"{res['machine']}; {res['date']}; commands: " + "; ".join(f"`{c}`" for c in res["commands"]), "",
                  *video_inversion.markdown(res["cost"], res["fits"])])
(here / "inversion_video.md").write_text(text)
print(text)
