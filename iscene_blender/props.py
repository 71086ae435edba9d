"""Per-scene settings and the job history (saved with the .blend), the per-object lock, seed and Use as Context, and
the label-map statistics the panels show (computed off the draw path, see :mod:`.pixels`). The token is never
here: it lives in the add-on preferences."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .masks import linked_label_map
from .pixels import LabelStats, PixelStats
from .seeds import DEFAULT_SEED, SEED_LIMIT

REFRESH_EVERY = 0.25  # seconds between label-map refreshes while a panel shows one


LABEL_STATS = PixelStats()


def label_stats(image) -> LabelStats | None:
    """The objects of a label map as last counted (None while the first count runs). Reads no pixels: safe in
    ``draw()``; asks the refresh timer to keep the value current."""
    if image is None:
        return None
    stats = LABEL_STATS.get(image)
    if not bpy.app.timers.is_registered(refresh_label_stats):
        bpy.app.timers.register(refresh_label_stats, first_interval=0.0)
    return stats


def refresh_label_stats() -> float | None:
    """Timer: land counts, start the next read if one is due, give every object of a counted map a name field;
    keeps running while a panel wants values."""
    LABEL_STATS.refresh(bpy.data.images)
    for scene in bpy.data.scenes:
        settings = scene.iscene
        stats = LABEL_STATS.peek(settings.labels) if settings.labels is not None else None
        if stats is not None:
            ensure_label_names(settings, stats.ids)
    return REFRESH_EVERY if LABEL_STATS.needs_refresh() else None


@bpy.app.handlers.persistent
def _forget_counts(*_args) -> None:
    """Another .blend was loaded: its images are other images, even where their names are the same."""
    LABEL_STATS.forget()


def ensure_label_names(settings, ids) -> None:
    """One name field per object id of the label map (names already typed are kept)."""
    known = {entry.label for entry in settings.label_names}
    for label in ids:
        if label not in known:
            entry = settings.label_names.add()
            entry.label = label


def label_names(settings) -> dict[int, str]:
    return {entry.label: entry.name.strip() for entry in settings.label_names if entry.name.strip()}


def _image_changed(settings, _context) -> None:
    """Choosing an image picks the label map made (or last used) for it."""
    labels = linked_label_map(settings.image)
    if labels is not None:
        settings.labels = labels


class ISceneLabelName(bpy.types.PropertyGroup):
    label: IntProperty(name="Label", description="The object's id in the label map")
    name: StringProperty(name="Name", description="Names the generated object (image_name), e.g. sofa; "
                                                  "empty: the label's number")


class ISceneJobRecord(bpy.types.PropertyGroup):
    """One job of the history (saved in the .blend)."""

    key: StringProperty(name="Key", description="The add-on's id of the job")
    server_id: StringProperty(name="Server Job", description="The server's id of the job")
    kind: StringProperty(name="Kind", description="generate, regenerate, refine, build, variants, segment or import")
    title: StringProperty(name="Title", description="What the job was")
    state: StringProperty(name="State", description="The job's last known state")
    message: StringProperty(name="Message", description="Why the job failed")
    hint: StringProperty(name="Hint", description="What to do about it")
    parent: StringProperty(name="Parent", description="The server job it was derived from")
    root: StringProperty(name="Scene", description="The imported scene it made or updated")
    image: StringProperty(name="Image", description="The reference image it was made from")
    name: StringProperty(name="Name", description="The scene's name (the image's), which its objects start with")
    folder: StringProperty(name="Folder", description="Where its files were downloaded", subtype="DIR_PATH")
    created: FloatProperty(name="Created", description="When it was started (seconds since 1970)")
    finished: FloatProperty(name="Finished", description="When it ended (seconds since 1970; 0 while running)")
    hidden: BoolProperty(name="Removed", description="Removed from the list by the artist")


class ISceneSettings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Image", type=bpy.types.Image, description="The reference image (a photo or "
                           "render of the scene)", update=_image_changed)
    labels: PointerProperty(name="Label Map", type=bpy.types.Image,
                            description="One flat colour or id per object, background 0 (black)")
    seed: IntProperty(name="Seed", default=DEFAULT_SEED, min=0, max=SEED_LIMIT - 1,
                      description="Random seed of the scene: the same seed and inputs give the same scene")
    detail: EnumProperty(name="Detail", default="medium", description="How many faces each object's mesh gets",
                         items=[("low", "Low", "About 15k faces per object"),
                                ("medium", "Medium", "About 50k faces per object"),
                                ("high", "High", "About 200k faces per object")])
    steps: IntProperty(name="Steps", default=25, min=1, max=100,
                       description="Sampling steps of each stage: fewer is faster, more is cleaner")
    room_width: FloatProperty(name="Room Width", default=4.0, min=0.01, soft_max=100.0, unit="LENGTH",
                              description="Width of the generated scene, in metres (its widest horizontal side); "
                                          "change it later with Set Size from Selected")
    layout_only: BoolProperty(name="Layout Only", default=False,
                              description="Generate stops at the layout (stage 1): wire proxies to arrange and "
                                          "refine in seconds; Build Meshes then makes the meshes")
    make_camera_active: BoolProperty(name="Use as Scene Camera", default=True,
                                     description="On import, make the solved camera the scene camera and set the "
                                                 "render resolution to the image's")
    strength: FloatProperty(name="Strength", default=0.5, min=0.0, max=1.0, subtype="FACTOR",
                            description="Refine: 0 keeps the moved shapes, 1 re-generates them")
    refine_selected: BoolProperty(name="Selected Only", default=True,
                                  description="Refine only the selected objects (the others stay as they are)")
    points_per_side: IntProperty(name="Grid", default=16, min=4, max=64,
                                 description="Auto-segment: prompt points along each side of the image")
    show_overlay: BoolProperty(name="Show Label Overlay", default=True,
                               description="Draw the label map's colours over the image in the Image Editor")
    overlay_opacity: FloatProperty(name="Opacity", default=0.45, min=0.0, max=1.0, subtype="FACTOR",
                                   description="How strongly the label colours cover the image")
    show_names: BoolProperty(name="Object Names", default=False,
                             description="Show a name field per object of the label map")
    label_names: CollectionProperty(type=ISceneLabelName, name="Object Names",
                                    description="Names for the objects of the label map")
    history: CollectionProperty(type=ISceneJobRecord, name="History",
                                description="Every job run from this file, and the server's jobs")


CLASSES = (ISceneLabelName, ISceneJobRecord, ISceneSettings)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.iscene = PointerProperty(type=ISceneSettings)
    bpy.app.handlers.load_post.append(_forget_counts)
    bpy.types.Object.iscene_locked = BoolProperty(name="Lock", default=False,
                                                  description="Refine keeps this object exactly as it is")
    bpy.types.Object.iscene_seed = IntProperty(name="Seed", default=0, min=0, max=SEED_LIMIT - 1,
                                               description="This object's seed: Regenerate uses it if you changed "
                                                           "it, else a new random one (Randomize picks one)")
    bpy.types.Object.iscene_context = BoolProperty(
        name="Use as Context", default=False,
        description="Refine keeps this mesh as a fixed part of the scene: the generated objects are arranged around "
                    "it (it is never changed). Sent only while it is visible in the viewport")


def unregister():
    if bpy.app.timers.is_registered(refresh_label_stats):
        bpy.app.timers.unregister(refresh_label_stats)
    if _forget_counts in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_forget_counts)
    del bpy.types.Object.iscene_context
    del bpy.types.Object.iscene_seed
    del bpy.types.Object.iscene_locked
    del bpy.types.Scene.iscene
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    LABEL_STATS.clear()
