"""Operators: they gather what a job needs on the main thread, hand it to a worker and return at once."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import frames, importer, masks
from .jobs import Job
from .png import image_png
from .preferences import LocalServer, client, network_problem, preferences, user_dir
from .pump import RUNTIME, ensure_timer


def image_bytes(image: bpy.types.Image) -> bytes:
    """The encoded file of an image datablock: packed data or the file on disk while they hold what the artist
    sees, else a PNG of its pixels in memory (painted, generated or edited images)."""
    if not image.is_dirty:
        if image.packed_file is not None:
            return bytes(image.packed_file.data)
        path = Path(bpy.path.abspath(image.filepath)) if image.filepath else None
        if path is not None and path.is_file():
            return path.read_bytes()
    return image_png(image)


def _start(context, job: Job) -> Job:
    RUNTIME.start(job, client(context), preferences(context).poll_interval)
    ensure_timer()
    return job


def _job(key: str) -> Job | None:
    if key:
        return RUNTIME.jobs.get(key)
    active = [j for j in RUNTIME.jobs.values() if j.active]
    return active[-1] if active else None


def _title(image: bpy.types.Image) -> str:
    stem = Path(image.name).stem
    return stem or image.name


def _scene_collection(context) -> bpy.types.Collection | None:
    """The I-Scene collection of the active (or first selected) generated object."""
    for obj in [context.active_object, *context.selected_objects]:
        if obj is not None and importer.LABEL in obj:
            for collection in obj.users_collection:
                if importer.JOB in collection:
                    return collection
    return None


class NetworkOperator:
    def network_ok(self, context) -> bool:
        problem = network_problem(preferences(context).server_url)
        if problem:
            self.report({"ERROR"}, f"I-Scene: {problem}")
        return not problem


class ISCENE_OT_generate(NetworkOperator, bpy.types.Operator):
    """Send the image and its label map to the server and import the generated scene"""

    bl_idname = "iscene.generate"
    bl_label = "Generate Scene"

    def execute(self, context):
        settings = context.scene.iscene
        labels = settings.labels or masks.linked_label_map(settings.image)
        if settings.image is None or labels is None:
            self.report({"ERROR"}, "I-Scene: choose an image and its label map first (or Segment the image)")
            return {"CANCELLED"}
        if not self.network_ok(context):
            return {"CANCELLED"}
        try:
            inputs = {"image": image_bytes(settings.image), "labels": image_bytes(labels)}
        except (OSError, RuntimeError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot read the images ({err})")
            return {"CANCELLED"}
        params = {"seed": settings.seed, "detail": settings.detail, "steps": settings.steps,
                  "slat_steps": settings.steps}
        job = Job("generate", _title(settings.image), context.scene.name, Path(), params, inputs)
        job.folder = user_dir("jobs", job.key)
        _start(context, job)
        self.report({"INFO"}, "I-Scene: generating (Blender stays usable; see the I-Scene panel)")
        return {"FINISHED"}


class ISCENE_OT_regenerate(NetworkOperator, bpy.types.Operator):
    """New seeds for the selected objects; each keeps its place, edits, modifiers and materials"""

    bl_idname = "iscene.regenerate"
    bl_label = "Regenerate Selected"

    def execute(self, context):
        collection = _scene_collection(context)
        labels = sorted(int(o[importer.LABEL]) for o in context.selected_objects if importer.LABEL in o)
        if collection is None or not labels:
            self.report({"ERROR"}, "I-Scene: select generated objects to regenerate")
            return {"CANCELLED"}
        if not self.network_ok(context):
            return {"CANCELLED"}
        job = Job("regenerate", f"{collection.name} {labels}", context.scene.name, Path(), {"labels": labels},
                  parent=collection[importer.JOB], collection=collection.name)
        job.folder = user_dir("jobs", job.key)
        _start(context, job)
        return {"FINISHED"}


def refine_request(context, collection, selected_only: bool) -> tuple[dict, list[int]]:
    """The artist's edits of the scene's objects in its frame, and the labels to keep as they are."""
    root = importer.scene_root(collection)
    objects = importer.instance_objects(collection)
    selected = {o.name for o in context.selected_objects}
    transforms, locked = {}, []
    for label, obj in sorted(objects.items()):
        if obj.iscene_locked or (selected_only and obj.name not in selected):
            locked.append(label)
            continue
        edit = frames.edit_in_scene(root, obj)
        if not frames.is_identity(edit):
            transforms[label] = frames.to_rows(edit)
    deleted = [label for label in collection.get("iscene_labels", []) if label not in objects]
    return transforms, sorted(set(locked) | set(deleted))


class ISCENE_OT_refine(NetworkOperator, bpy.types.Operator):
    """Re-generate the scene coherently with your edits (locked objects stay exactly as they are)"""

    bl_idname = "iscene.refine"
    bl_label = "Refine"

    def execute(self, context):
        collection = _scene_collection(context)
        if collection is None:
            self.report({"ERROR"}, "I-Scene: select an object of a generated scene to refine")
            return {"CANCELLED"}
        if not self.network_ok(context):
            return {"CANCELLED"}
        settings = context.scene.iscene
        transforms, locked = refine_request(context, collection, settings.refine_selected)
        params = {"transforms": transforms, "locked": locked, "strength": settings.strength}
        job = Job("refine", collection.name, context.scene.name, Path(), params, parent=collection[importer.JOB],
                  collection=collection.name)
        job.folder = user_dir("jobs", job.key)
        _start(context, job)
        return {"FINISHED"}


class ISCENE_OT_segment(NetworkOperator, bpy.types.Operator):
    """Make the label map: Segment Anything on the server, prompted by the boxes and dots you annotated on the
    image (or automatically over the whole image)"""

    bl_idname = "iscene.segment"
    bl_label = "Segment"

    mode: EnumProperty(name="Mode", default="PROMPTS", items=[
        ("PROMPTS", "From Annotations", "One object per annotated box or dot"),
        ("AUTO", "Automatic", "Find the objects over a grid of points")])
    annotation: StringProperty(name="Annotation", default="", options={"HIDDEN", "SKIP_SAVE"},
                               description="Annotation datablock to read (default: the Image Editor's)")

    def execute(self, context):
        settings = context.scene.iscene
        image = settings.image or active_image(context)
        if image is None or not image.size[0]:
            self.report({"ERROR"}, "I-Scene: choose the image to segment first")
            return {"CANCELLED"}
        if self.mode == "AUTO":
            prompts = {"auto": True, "points_per_side": settings.points_per_side}
        else:
            annotation = masks.annotation_for(context, image, self.annotation)
            strokes = masks.annotation_strokes(annotation) if annotation is not None else []
            if not strokes:
                self.report({"ERROR"}, "I-Scene: nothing to segment: in the Image Editor, draw a box around each "
                                       "object (or click on it) with the Annotate tool, or use Auto-segment")
                return {"CANCELLED"}
            prompts = masks.prompts_from_strokes(strokes, *image.size)
        if not self.network_ok(context):
            return {"CANCELLED"}
        try:
            inputs = {"image": image_bytes(image)}
        except (OSError, RuntimeError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot read the image ({err})")
            return {"CANCELLED"}
        job = Job("segment", _title(image), context.scene.name, Path(), {"prompts": prompts}, inputs,
                  image=image.name)
        job.folder = user_dir("jobs", job.key)
        _start(context, job)
        return {"FINISHED"}


class JobOperator:
    """An operator on one job of the job list, named by its ``key``; does nothing if the job is gone."""

    key: StringProperty(default="", options={"HIDDEN"})

    def execute(self, context):
        job = RUNTIME.jobs.get(self.key)
        return {"CANCELLED"} if job is None else self.run(context, job)


class ISCENE_OT_cancel(JobOperator, bpy.types.Operator):
    """Cancel the job (the server stops within one sampling step and frees the GPU)"""

    bl_idname = "iscene.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        job = _job(self.key)
        if job is None or not job.active:
            return {"CANCELLED"}
        job.cancel.set()
        return {"FINISHED"}


class ISCENE_OT_retry(JobOperator, bpy.types.Operator):
    """Run this job again with the same inputs"""

    bl_idname = "iscene.retry"
    bl_label = "Retry"

    def run(self, context, old: Job):
        if old.active:
            return {"CANCELLED"}
        job = Job(old.kind, old.title, old.scene, Path(), dict(old.params), dict(old.inputs), old.parent,
                  old.collection, old.image)
        job.folder = user_dir("jobs", job.key)
        _start(context, job)
        return {"FINISHED"}


class ISCENE_OT_open_folder(JobOperator, bpy.types.Operator):
    """Open the folder holding this job's downloaded files"""

    bl_idname = "iscene.open_folder"
    bl_label = "Open Results Folder"

    def run(self, context, job: Job):
        job.folder.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.path_open(filepath=str(job.folder))
        return {"FINISHED"}


def error_report(job: Job) -> str:
    """What Copy Error puts on the clipboard: enough for a bug report or a question to the server's admin."""
    return f"I-Scene {job.kind} failed: {job.message}\nHint: {job.hint}\nServer job: {job.server_id or 'none'}"


class ISCENE_OT_copy_error(JobOperator, bpy.types.Operator):
    """Copy the job's error message and hint to the clipboard"""

    bl_idname = "iscene.copy_error"
    bl_label = "Copy Error"

    def run(self, context, job: Job):
        context.window_manager.clipboard = error_report(job)
        return {"FINISHED"}


class ISCENE_OT_check_server(NetworkOperator, bpy.types.Operator):
    """Ask the server whether it is reachable, an I-Scene server, and ready"""

    bl_idname = "iscene.check_server"
    bl_label = "Check Server"

    def execute(self, context):
        if not self.network_ok(context):
            return {"CANCELLED"}
        RUNTIME.check_health(client(context))
        ensure_timer()
        return {"FINISHED"}


class ISCENE_OT_use_active_image(bpy.types.Operator):
    """Use the image of the Image Editor or of the active image empty as the reference image"""

    bl_idname = "iscene.use_active_image"
    bl_label = "Use Active Image"

    def execute(self, context):
        image = active_image(context)
        if image is None:
            self.report({"ERROR"}, "I-Scene: no image in an Image Editor and no active image empty")
            return {"CANCELLED"}
        context.scene.iscene.image = image  # also picks its label map, if it has one
        return {"FINISHED"}


def active_image(context) -> bpy.types.Image | None:
    obj = context.active_object
    if obj is not None and obj.type == "EMPTY" and obj.empty_display_type == "IMAGE" and obj.data is not None:
        return obj.data
    return next((space.image for space in masks.image_editors(context) if space.image is not None), None)


class ISCENE_OT_load_label_map(bpy.types.Operator, ImportHelper):
    """Load a label map (PNG: one flat id or colour per object, background 0) for the reference image"""

    bl_idname = "iscene.load_label_map"
    bl_label = "Load Label Map"
    filter_glob: StringProperty(default="*.png;*.tif;*.tiff;*.bmp;*.exr", options={"HIDDEN"})

    def execute(self, context):
        try:
            image = bpy.data.images.load(self.filepath, check_existing=True)
        except RuntimeError as err:
            self.report({"ERROR"}, f"I-Scene: cannot load {self.filepath} ({err})")
            return {"CANCELLED"}
        image.colorspace_settings.name = "Non-Color"  # ids, not colours
        settings = context.scene.iscene
        settings.labels = image
        if settings.image is not None:
            masks.link_label_map(settings.image, image)  # Generate Scene picks it again for this image
        return {"FINISHED"}


class ISCENE_OT_start_server(bpy.types.Operator):
    """Start the local server command from the preferences; its output goes to a log file"""

    bl_idname = "iscene.start_server"
    bl_label = "Start Local Server"

    def execute(self, context):
        prefs = preferences(context)
        try:
            LocalServer.start(prefs.server_command, user_dir("logs") / "server.log")
        except (OSError, ValueError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot start '{prefs.server_command}' ({err})")
            return {"CANCELLED"}
        self.report({"INFO"}, f"I-Scene: server starting; log at {LocalServer.log_path}")
        return {"FINISHED"}


class ISCENE_OT_stop_server(bpy.types.Operator):
    """Stop the local server this add-on started"""

    bl_idname = "iscene.stop_server"
    bl_label = "Stop Local Server"

    def execute(self, context):
        LocalServer.stop()
        return {"FINISHED"}


CLASSES = (ISCENE_OT_generate, ISCENE_OT_segment, ISCENE_OT_regenerate, ISCENE_OT_refine, ISCENE_OT_cancel,
           ISCENE_OT_retry, ISCENE_OT_open_folder, ISCENE_OT_copy_error, ISCENE_OT_check_server,
           ISCENE_OT_use_active_image, ISCENE_OT_load_label_map, ISCENE_OT_start_server, ISCENE_OT_stop_server)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
