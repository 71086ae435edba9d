"""The job list's operators: cancel, retry, re-import, remove or clear jobs, merge the server's jobs, open a
job's folder and copy its error. Each acts on the job its row names by ``key``."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import history, job_requests, wording
from .launch import start_job
from .preferences import client
from .problems import Gated, server_problem
from .pump import RUNTIME, ensure_timer, folders_in_use


class JobOperator:
    """An operator on one job of the list, named by its ``key`` (the add-on's or the server's id)."""

    key: StringProperty(default="", options={"HIDDEN", "SKIP_SAVE"}, description="The job")

    @classmethod
    def record(cls, context, key: str):
        return history.find(context.scene, key)


class ISCENE_OT_cancel(Gated, JobOperator, bpy.types.Operator):
    """Cancel the job (the server stops within one sampling step and frees the GPU)"""

    bl_idname = "iscene.cancel"
    bl_label = "Cancel"

    @classmethod
    def problem(cls, context) -> str:
        return "" if RUNTIME.any_active() else "no job is running"

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
        start_job(context, job_requests.retry_request(old))
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
        start_job(context, job_requests.reimport_request(context, record))
        return {"FINISHED"}


class ISCENE_OT_remove_job(Gated, JobOperator, bpy.types.Operator):
    """Remove this job from the list and delete its downloaded files (objects already imported stay)"""

    bl_idname = "iscene.remove_job"
    bl_label = "Remove"
    bl_options = frozenset({"REGISTER", "UNDO"})

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
    bl_options = frozenset({"REGISTER", "UNDO"})

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
        context.window_manager.clipboard = wording.error_report(record)
        return {"FINISHED"}


CLASSES = (ISCENE_OT_cancel, ISCENE_OT_retry, ISCENE_OT_reimport, ISCENE_OT_remove_job, ISCENE_OT_clear_jobs,
           ISCENE_OT_refresh_jobs, ISCENE_OT_open_folder, ISCENE_OT_copy_error)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
