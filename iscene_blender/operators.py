"""Operators: each one's ``poll()`` says why its button is grey; ``execute()`` gathers what a job needs (see
:mod:`.job_requests`), hands it to a worker and returns at once."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import history, importer, job_requests, masks, provenance, wording
from .client import is_loopback, normalise_url
from .jobs import Job
from .preferences import client, network_problem, preferences, user_dir
from .props import label_names, label_stats
from .pump import RUNTIME, ensure_timer, folders_in_use
from .server import LocalServer


def start_job(context, request: job_requests.Request) -> Job:
    job = Job(request.kind, request.title, context.scene.name, user_dir("jobs"), request.params, request.inputs,
              request.parent, request.root, request.targets, request.image, request.names)
    job.folder = user_dir("jobs", job.key)
    history.save(context.scene, job)
    RUNTIME.start(job, client(context), preferences(context).poll_interval)
    ensure_timer()
    return job


def server_problem(context) -> str:
    """Why no request can go to the server now ('' if one may)."""
    problem = network_problem(preferences(context).server_url)
    if problem:
        return problem
    error = RUNTIME.health_error
    if error is not None:
        return f"{error.message}: {error.hint}" if error.hint else error.message
    return ""


class Gated:
    """An operator whose ``poll()`` greys its button and says why: ``problem()`` is that reason ('' if none)."""

    @classmethod
    def problem(cls, context) -> str:
        return ""

    @classmethod
    def poll(cls, context):
        problem = cls.problem(context)
        if problem:
            cls.poll_message_set(problem)
        return not problem


def inputs_problem(settings) -> str:
    labels = settings.labels or masks.linked_label_map(settings.image)
    if settings.image is None or labels is None:
        return "choose an image and its label map first (or Segment the image)"
    stats = label_stats(labels)
    if stats is not None and stats.count == 0:
        return "the label map has no objects: paint each object in its own colour (background black)"
    return ""


class ISCENE_OT_generate(Gated, bpy.types.Operator):
    """Send the image and its label map to the server and import the generated scene"""

    bl_idname = "iscene.generate"
    bl_label = "Generate Scene"

    @classmethod
    def problem(cls, context) -> str:
        return inputs_problem(context.scene.iscene) or server_problem(context)

    def execute(self, context):
        try:
            request = job_requests.generate_request(context.scene.iscene)
        except (OSError, RuntimeError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot read the images ({err})")
            return {"CANCELLED"}
        start_job(context, request)
        self.report({"INFO"}, "I-Scene: generating (Blender stays usable; see the I-Scene panel)")
        return {"FINISHED"}


def scene_problem(context) -> str:
    root, selected = provenance.selected_scene(context)
    if root is None:
        if any(provenance.is_member(o) for o in context.selected_objects):
            return "the generated scene's root empty was deleted; re-import the job from the history"
        return "select objects of a generated scene"
    return "" if selected else "select the generated objects to change"


class ISCENE_OT_regenerate(Gated, bpy.types.Operator):
    """New shapes for the selected objects (each uses its Seed if you changed it, else a new random one); each
    keeps its place, edits, modifiers and materials"""

    bl_idname = "iscene.regenerate"
    bl_label = "Regenerate Selected"

    @classmethod
    def problem(cls, context) -> str:
        return scene_problem(context) or server_problem(context)

    def execute(self, context):
        root, selected = provenance.selected_scene(context)
        for request in job_requests.regenerate_requests(root, selected):
            start_job(context, request)
        return {"FINISHED"}


class ISCENE_OT_refine(Gated, bpy.types.Operator):
    """Re-generate the scene coherently with your edits (locked objects stay exactly as they are)"""

    bl_idname = "iscene.refine"
    bl_label = "Refine"

    @classmethod
    def problem(cls, context) -> str:
        root, _ = provenance.selected_scene(context)
        return ("select an object of a generated scene" if root is None else "") or server_problem(context)

    def execute(self, context):
        root, _ = provenance.selected_scene(context)
        settings = context.scene.iscene
        start_job(context, job_requests.refine_request(context, root, settings.refine_selected, settings.strength))
        return {"FINISHED"}


class ISCENE_OT_randomize_seed(Gated, bpy.types.Operator):
    """Pick a new random seed for the selected generated objects (Regenerate then makes new shapes with it)"""

    bl_idname = "iscene.randomize_seed"
    bl_label = "Randomize Seed"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def problem(cls, context) -> str:
        return scene_problem(context)

    def execute(self, context):
        for obj in provenance.selected_scene(context)[1]:
            obj[importer.SEED] = job_requests.random_seed()
        return {"FINISHED"}


class ISCENE_OT_set_size(Gated, bpy.types.Operator):
    """Rescale the whole generated scene about its root so the active object has this real size; every edit
    is kept"""

    bl_idname = "iscene.set_size"
    bl_label = "Set Size from Selected"
    bl_options = {"REGISTER", "UNDO"}

    dimension: EnumProperty(name="Dimension", default="HEIGHT", description="Which size of the object you know",
                            items=[("HEIGHT", "Height", "The object's height (Z)"),
                                   ("WIDTH", "Width", "The object's longest horizontal side")])
    size: FloatProperty(name="Size", default=1.0, min=0.001, soft_max=20.0, unit="LENGTH",
                        description="The object's real size, e.g. a chair is about 0.9 m tall")

    @classmethod
    def problem(cls, context) -> str:
        obj = context.active_object
        if not provenance.is_instance(obj):
            return "make a generated object active (one whose real size you know)"
        if provenance.root_of(obj) is None:
            return "the generated scene's root empty was deleted; re-import the job from the history"
        return ""

    @staticmethod
    def measured(obj, dimension: str) -> float:
        x, y, z = obj.dimensions
        return z if dimension == "HEIGHT" else max(x, y)

    def invoke(self, context, event):
        self.size = self.measured(context.active_object, self.dimension)
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        obj = context.active_object
        current = self.measured(obj, self.dimension)
        if current <= 1e-9:
            self.report({"ERROR"}, "I-Scene: the active object has no size along that direction")
            return {"CANCELLED"}
        importer.resize_scene(provenance.root_of(obj), self.size / current)
        return {"FINISHED"}


class ISCENE_OT_segment(Gated, bpy.types.Operator):
    """Make the label map: Segment Anything on the server, prompted by the boxes and dots you annotated on the
    image (or automatically over the whole image)"""

    bl_idname = "iscene.segment"
    bl_label = "Segment"

    mode: EnumProperty(name="Mode", default="PROMPTS", description="Where the objects come from", items=[
        ("PROMPTS", "From Annotations", "One object per annotated box or dot"),
        ("AUTO", "Automatic", "Find the objects over a grid of points")])
    annotation: StringProperty(name="Annotation", default="", options={"HIDDEN", "SKIP_SAVE"},
                               description="Annotation datablock to read (default: the Image Editor's)")

    @classmethod
    def problem(cls, context) -> str:
        if (context.scene.iscene.image or active_image(context)) is None:
            return "choose the image to segment first (Image field, or open it in the Image Editor)"
        segment = (RUNTIME.health or {}).get("segment") or {}
        if segment and not segment.get("available"):
            return "the server cannot segment: install it with pip install iscene-server[segment]"
        return server_problem(context)

    def execute(self, context):
        settings = context.scene.iscene
        image = settings.image or active_image(context)
        if not image.size[0]:
            self.report({"ERROR"}, "I-Scene: the image has no pixels; save or reload it")
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
        try:
            request = job_requests.segment_request(image, prompts)
        except (OSError, RuntimeError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot read the image ({err})")
            return {"CANCELLED"}
        start_job(context, request)
        return {"FINISHED"}


class JobOperator:
    """An operator on one job of the list, named by its ``key`` (the add-on's or the server's id)."""

    key: StringProperty(default="", options={"HIDDEN", "SKIP_SAVE"}, description="The job")

    @classmethod
    def job(cls, context, key: str):
        return RUNTIME.jobs.get(key)

    @classmethod
    def record(cls, context, key: str):
        return history.find(context.scene, key)


class ISCENE_OT_cancel(Gated, JobOperator, bpy.types.Operator):
    """Cancel the job (the server stops within one sampling step and frees the GPU)"""

    bl_idname = "iscene.cancel"
    bl_label = "Cancel"

    @classmethod
    def problem(cls, context) -> str:
        return "" if any(j.active for j in RUNTIME.jobs.values()) else "no job is running"

    def execute(self, context):
        job = RUNTIME.jobs.get(self.key) if self.key else next(
            (j for j in reversed(list(RUNTIME.jobs.values())) if j.active), None)
        if job is None or not job.active:
            self.report({"ERROR"}, "I-Scene: that job is not running any more")
            return {"CANCELLED"}
        job.cancel.set()
        return {"FINISHED"}


class ISCENE_OT_retry(Gated, JobOperator, bpy.types.Operator):
    """Run this job again with the same inputs"""

    bl_idname = "iscene.retry"
    bl_label = "Retry"

    @classmethod
    def problem(cls, context) -> str:
        if any(not j.active for j in RUNTIME.jobs.values()):
            return ""
        return "only jobs run since Blender started can be retried (their inputs are in memory)"

    def execute(self, context):
        old = RUNTIME.jobs.get(self.key)
        if old is None or old.active:
            self.report({"ERROR"}, "I-Scene: this job's inputs are gone (Blender restarted): re-import it or "
                                   "Generate again")
            return {"CANCELLED"}
        start_job(context, job_requests.Request(old.kind, old.title, dict(old.params), dict(old.inputs), old.parent,
                                                old.root, dict(old.targets), old.image, dict(old.names)))
        return {"FINISHED"}


class ISCENE_OT_reimport(Gated, JobOperator, bpy.types.Operator):
    """Download this finished job again and import it as a new scene (at the 3D cursor, Room Width wide, named
    with the current object names)"""

    bl_idname = "iscene.reimport"
    bl_label = "Re-import"

    @classmethod
    def problem(cls, context) -> str:
        return server_problem(context)

    def execute(self, context):
        record = self.record(context, self.key)
        if record is None or record.state != "succeeded" or not record.server_id or record.kind == "segment":
            self.report({"ERROR"}, "I-Scene: only a finished scene job can be re-imported")
            return {"CANCELLED"}
        title = wording.job_title("import", record.title)
        params = {"name": record.name} if record.name else {}
        image = record.image or next((i.name for i in bpy.data.images if record.name and
                                      masks.image_stem(i) == record.name), None)  # the camera's background
        start_job(context, job_requests.Request("import", title, params, parent=record.server_id, image=image,
                                                names=label_names(context.scene.iscene)))
        return {"FINISHED"}


class ISCENE_OT_remove_job(Gated, JobOperator, bpy.types.Operator):
    """Remove this job from the list and delete its downloaded files (objects already imported stay)"""

    bl_idname = "iscene.remove_job"
    bl_label = "Remove"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def problem(cls, context) -> str:
        return "" if history.visible(context.scene) else "the job list is empty"

    def execute(self, context):
        record = self.record(context, self.key)
        job = RUNTIME.jobs.get(record.key) if record is not None else None
        if record is None or (job is not None and job.active):
            self.report({"ERROR"}, "I-Scene: cancel the job before removing it")
            return {"CANCELLED"}
        history.remove(record, folders_in_use())
        return {"FINISHED"}


class ISCENE_OT_clear_jobs(Gated, bpy.types.Operator):
    """Remove every finished job from the list and delete their downloaded files (imported objects stay)"""

    bl_idname = "iscene.clear_jobs"
    bl_label = "Clear"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def problem(cls, context) -> str:
        return "" if history.visible(context.scene) else "the job list is empty"

    def execute(self, context):
        active = {key for key, job in RUNTIME.jobs.items() if job.active}
        for record in history.visible(context.scene):
            if record.key not in active:
                history.remove(record, folders_in_use())
        return {"FINISHED"}


class ISCENE_OT_refresh_jobs(Gated, bpy.types.Operator):
    """Ask the server for its jobs and add those this file does not list yet"""

    bl_idname = "iscene.refresh_jobs"
    bl_label = "Refresh Jobs"

    @classmethod
    def problem(cls, context) -> str:
        return server_problem(context)

    def execute(self, context):
        RUNTIME.list_server_jobs(client(context))
        ensure_timer()
        return {"FINISHED"}


class ISCENE_OT_open_folder(Gated, JobOperator, bpy.types.Operator):
    """Open the folder holding this job's downloads (scene.json, scene.glb and one GLB per object)"""

    bl_idname = "iscene.open_folder"
    bl_label = "Open Results Folder"

    @classmethod
    def problem(cls, context) -> str:
        return "" if history.visible(context.scene) else "no job has downloaded anything yet"

    def execute(self, context):
        record = self.record(context, self.key)
        if record is None or not record.folder or not Path(record.folder).is_dir():
            self.report({"ERROR"}, "I-Scene: this job has no downloads (re-import it to fetch them)")
            return {"CANCELLED"}
        bpy.ops.wm.path_open(filepath=record.folder)
        return {"FINISHED"}


def error_report(record) -> str:
    """What Copy Error puts on the clipboard: enough for a bug report or a question to the server's admin."""
    return (f"I-Scene {record.kind} failed: {record.message}\nHint: {record.hint}\n"
            f"Server job: {record.server_id or 'none'}")


class ISCENE_OT_copy_error(Gated, JobOperator, bpy.types.Operator):
    """Copy the job's error message and hint to the clipboard"""

    bl_idname = "iscene.copy_error"
    bl_label = "Copy Error"

    @classmethod
    def problem(cls, context) -> str:
        return "" if any(r.state == "failed" for r in history.visible(context.scene)) else "no job failed"

    def execute(self, context):
        record = self.record(context, self.key)
        if record is None:
            return {"CANCELLED"}
        context.window_manager.clipboard = error_report(record)
        return {"FINISHED"}


class ISCENE_OT_check_server(Gated, bpy.types.Operator):
    """Ask the server whether it is reachable, an I-Scene server, and ready"""

    bl_idname = "iscene.check_server"
    bl_label = "Check Server"

    @classmethod
    def problem(cls, context) -> str:
        return network_problem(preferences(context).server_url)

    def execute(self, context):
        RUNTIME.check_health(client(context))
        ensure_timer()
        return {"FINISHED"}


def active_image(context) -> bpy.types.Image | None:
    obj = context.active_object
    if obj is not None and obj.type == "EMPTY" and obj.empty_display_type == "IMAGE" and obj.data is not None:
        return obj.data
    return next((space.image for space in masks.image_editors(context) if space.image is not None), None)


class ISCENE_OT_use_active_image(Gated, bpy.types.Operator):
    """Use the image of the Image Editor or of the active image empty as the reference image"""

    bl_idname = "iscene.use_active_image"
    bl_label = "Use Active Image"

    @classmethod
    def problem(cls, context) -> str:
        if active_image(context) is not None:
            return ""
        return "open the image in an Image Editor, or make an image empty active"

    def execute(self, context):
        context.scene.iscene.image = active_image(context)  # also picks its label map, if it has one
        return {"FINISHED"}


class ISCENE_OT_load_label_map(Gated, bpy.types.Operator, ImportHelper):
    """Load a label map (PNG: one flat id or colour per object, background 0) for the reference image"""

    bl_idname = "iscene.load_label_map"
    bl_label = "Load Label Map"
    filter_glob: StringProperty(default="*.png;*.tif;*.tiff;*.bmp;*.exr", options={"HIDDEN"},
                                description="Image files")

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


def local_server_problem(context) -> str:
    prefs = preferences(context)
    try:
        url = normalise_url(prefs.server_url)
    except ValueError as err:
        return str(err)
    if not is_loopback(url):
        return "the Server URL is not on this computer: a local server needs e.g. http://127.0.0.1:8712"
    if not prefs.server_command.strip():
        return "set the Local Server Command (e.g. iscene-server serve)"
    return "a server started by Blender is already running" if LocalServer.running() else ""


class ISCENE_OT_start_server(Gated, bpy.types.Operator):
    """Start the Local Server Command on the port of the Server URL; its output goes to a log file, and it
    stops when Blender quits"""

    bl_idname = "iscene.start_server"
    bl_label = "Start Local Server"

    @classmethod
    def problem(cls, context) -> str:
        return local_server_problem(context)

    def execute(self, context):
        prefs = preferences(context)
        try:
            LocalServer.start(prefs.server_command, normalise_url(prefs.server_url), user_dir("logs") / "server.log")
        except (OSError, ValueError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot start '{prefs.server_command}' ({err})")
            return {"CANCELLED"}
        RUNTIME.health, RUNTIME.health_error, RUNTIME.health_checked = None, None, 0.0
        self.report({"INFO"}, f"I-Scene: server starting; log at {LocalServer.log_path}")
        return {"FINISHED"}


class ISCENE_OT_stop_server(Gated, bpy.types.Operator):
    """Stop the local server Blender started (a server started elsewhere is never touched)"""

    bl_idname = "iscene.stop_server"
    bl_label = "Stop Local Server"

    @classmethod
    def problem(cls, context) -> str:
        return "" if LocalServer.running() else "Blender has not started a server that still runs"

    def execute(self, context):
        LocalServer.stop()
        return {"FINISHED"}


class ISCENE_OT_open_log(Gated, bpy.types.Operator):
    """Open the log of the local server Blender started"""

    bl_idname = "iscene.open_log"
    bl_label = "Open Log"

    @classmethod
    def problem(cls, context) -> str:
        log = LocalServer.log_path
        return "" if log is not None and log.is_file() else "no local server has been started"

    def execute(self, context):
        bpy.ops.wm.path_open(filepath=str(LocalServer.log_path))
        return {"FINISHED"}


CLASSES = (ISCENE_OT_generate, ISCENE_OT_segment, ISCENE_OT_regenerate, ISCENE_OT_refine, ISCENE_OT_randomize_seed,
           ISCENE_OT_set_size, ISCENE_OT_cancel, ISCENE_OT_retry, ISCENE_OT_reimport, ISCENE_OT_remove_job,
           ISCENE_OT_clear_jobs, ISCENE_OT_refresh_jobs, ISCENE_OT_open_folder, ISCENE_OT_copy_error,
           ISCENE_OT_check_server, ISCENE_OT_use_active_image, ISCENE_OT_load_label_map, ISCENE_OT_start_server,
           ISCENE_OT_stop_server, ISCENE_OT_open_log)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
