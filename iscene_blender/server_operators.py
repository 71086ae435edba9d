"""The server's operators: check it, and start, stop or read the log of a server Blender runs on this
computer (a server started elsewhere is never touched)."""

from __future__ import annotations

import bpy

from .client import normalise_url
from .preferences import client, network_problem, preferences, user_dir
from .problems import Gated, local_server_problem
from .pump import RUNTIME, ensure_timer
from .server import LocalServer


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


CLASSES = (ISCENE_OT_check_server, ISCENE_OT_start_server, ISCENE_OT_stop_server, ISCENE_OT_open_log)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
