"""Every text the artist reads about jobs, in one place: stage names in artist words, counts, titles, progress
lines and wrapping to the sidebar's width. Nothing here touches ``bpy``."""

from __future__ import annotations

import textwrap
import time

# The server's stage names (engine/progress.py) and what an artist calls them.
STAGES = {"preprocess": "Preparing", "condition": "Reading the image", "stage1": "Layout", "decode": "Decoding",
          "camera": "Solving the camera", "stage2": "Shapes", "meshes": "Building meshes"}
STATES = {"waiting": "After the scene's last job", "submitting": "Sending", "queued": "Waiting", "running": "Running",
          "downloading": "Downloading", "importing": "Importing", "succeeded": "Done", "failed": "Failed",
          "cancelled": "Cancelled"}
KINDS = {"generate": "Generate", "regenerate": "Regenerate", "refine": "Refine", "segment": "Segment",
         "import": "Re-import", "build": "Build Meshes", "variants": "Variants", "keep": "Keep"}
CHAR_PX = 7.0  # the width of an average character of the UI font at scale 1, in pixels


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    return f" · ETA {seconds // 60}:{seconds % 60:02d}"


def progress_text(state: str, stage: str, step: int, total: int, queue_position: int | None,
                  eta_s: float | None, after: str = "") -> str:
    """``Layout 3/25 · ETA 1:15``, ``Waiting (#2 in queue)``, ``Downloading``, ``After Regenerate · chair``."""
    if state == "waiting":
        return f"After {after}" if after else STATES[state]
    name = STAGES.get(stage, stage.replace("_", " ").capitalize()) if stage and state == "running" else \
        STATES.get(state, state)
    steps = f" {step}/{total}" if total and state == "running" else ""
    queued = f" (#{queue_position} in queue)" if queue_position else ""
    return f"{name}{steps}{queued}{clock(eta_s)}"


def job_title(kind: str, image: str = "", objects: int | None = None, seed: int | None = None,
              created: float | None = None) -> str:
    """What a job was: ``Generate · living_room · 2 objects · seed 7 · 17:42``."""
    parts = [KINDS.get(kind, kind.capitalize())]
    if image:
        parts.append(image)
    if objects is not None:
        parts.append(plural(objects, "object"))
    if seed is not None:
        parts.append(f"seed {seed}")
    if created is not None:
        parts.append(time.strftime("%b %d %H:%M", time.localtime(created)))
    return " · ".join(parts)


def wrap(text: str, width_px: float, ui_scale: float = 1.0) -> list[str]:
    """``text`` in lines that fit a region ``width_px`` wide (labels in Blender are cut, never wrapped)."""
    columns = max(16, int(width_px / (CHAR_PX * max(ui_scale, 0.1))) - 4)
    return textwrap.wrap(text, columns, break_on_hyphens=False) or [""]


def error_report(record) -> str:
    """What Copy Error puts on the clipboard: enough for a bug report or a question to the server's admin."""
    return (f"I-Scene {record.kind} failed: {record.message}\nHint: {record.hint}\n"
            f"Server job: {record.server_id or 'none'}")
