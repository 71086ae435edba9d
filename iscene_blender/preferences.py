"""Add-on preferences: where the server is, the token (kept here, never in .blend files), timeouts, and an
optional command to start a local server whose output goes to a log file."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import bpy
from bpy.props import FloatProperty, StringProperty

from .client import Client, is_loopback

DEFAULT_URL = "http://127.0.0.1:8712"


class LocalServer:
    """The server this add-on started (if any): one process, its log file."""

    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @classmethod
    def start(cls, command: str, log_path: Path) -> None:
        cls.stop()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cls.log_path = log_path
        with open(log_path, "ab") as log:
            cls.process = subprocess.Popen(shlex.split(command), stdout=log, stderr=subprocess.STDOUT)

    @classmethod
    def running(cls) -> bool:
        return cls.process is not None and cls.process.poll() is None

    @classmethod
    def stop(cls) -> None:
        if cls.running():
            cls.process.terminate()
            try:
                cls.process.wait(10)
            except subprocess.TimeoutExpired:
                cls.process.kill()
        cls.process = None


def preferences(context=None):
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def user_dir(*parts: str) -> Path:
    """A writable folder of the extension's own (never inside the add-on directory)."""
    return Path(bpy.utils.extension_path_user(__package__, path="/".join(parts), create=True))


def network_problem(url: str) -> str:
    """Why the add-on may not contact ``url`` now ('' if it may)."""
    if not url.strip():
        return "no server URL is set"
    if not is_loopback(url) and not bpy.app.online_access:
        return ("online access is off, and the server is not on this computer: enable 'Allow Online Access' "
                "in Preferences > System (or use a server on 127.0.0.1)")
    return ""


def client(context=None) -> Client:
    prefs = preferences(context)
    return Client(prefs.server_url, prefs.token, prefs.timeout, prefs.download_timeout)


class ISceneAddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    server_url: StringProperty(name="Server URL", default=DEFAULT_URL,
                               description="Address of the I-Scene server (iscene-server serve)")
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="The server's access token (needed when it listens beyond this computer)")
    timeout: FloatProperty(name="Timeout", default=10.0, min=1.0, max=300.0, unit="TIME_ABSOLUTE",
                           description="How long to wait for the server to answer a request")
    download_timeout: FloatProperty(name="Download Timeout", default=120.0, min=5.0, max=3600.0,
                                    unit="TIME_ABSOLUTE", description="How long a result download may take")
    poll_interval: FloatProperty(name="Poll Interval", default=0.5, min=0.1, max=10.0, unit="TIME_ABSOLUTE")
    server_command: StringProperty(name="Local Server Command", default="iscene-server serve",
                                   description="Command that starts a server on this computer (optional)")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "server_url")
        problem = network_problem(self.server_url)
        if problem:
            box = layout.box()
            box.label(text=problem, icon="ERROR")
            if not bpy.app.online_access and not is_loopback(self.server_url):
                box.operator("screen.userpref_show", text="Open System Preferences",
                             icon="PREFERENCES").section = "SYSTEM"
        layout.prop(self, "token")
        row = layout.row()
        row.prop(self, "timeout")
        row.prop(self, "download_timeout")
        row.prop(self, "poll_interval")
        box = layout.box()
        box.label(text="Local server (optional)")
        box.prop(self, "server_command")
        row = box.row()
        row.operator("iscene.start_server", icon="PLAY")
        row.operator("iscene.stop_server", icon="CANCEL")
        if LocalServer.log_path:
            box.label(text=f"Log: {LocalServer.log_path}")


def register():
    bpy.utils.register_class(ISceneAddonPreferences)


def unregister():
    LocalServer.stop()
    bpy.utils.unregister_class(ISceneAddonPreferences)
