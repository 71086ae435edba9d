"""Add-on preferences: where the server is, the token (kept here, never in .blend files), timeouts, the
download folder's cap, and an optional command to start a local server."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import FloatProperty, StringProperty

from .client import Client, is_loopback, normalise_url

DEFAULT_URL = "http://127.0.0.1:8712"


def preferences(context=None):
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def user_dir(*parts: str) -> Path:
    """A writable folder of the extension's own (never inside the add-on directory)."""
    return Path(bpy.utils.extension_path_user(__package__, path="/".join(parts), create=True))


def network_problem(url: str) -> str:
    """Why the add-on may not contact ``url`` now ('' if it may)."""
    try:
        url = normalise_url(url)
    except ValueError as err:
        return str(err)
    if not is_loopback(url) and not bpy.app.online_access:
        return ("online access is off, and the server is not on this computer: enable 'Allow Online Access' "
                "in Preferences > System (or use a server on 127.0.0.1)")
    return ""


def client(context=None) -> Client:
    prefs = preferences(context)
    return Client(normalise_url(prefs.server_url), prefs.token, prefs.timeout, prefs.download_timeout)


def _normalise(prefs, _context) -> None:
    """Show the URL as the add-on uses it (``http://`` added, ``/v1`` and trailing slashes removed)."""
    try:
        url = normalise_url(prefs.server_url)
    except ValueError:
        return  # the panel says what is wrong
    if url != prefs.server_url:
        prefs.server_url = url


class ISceneAddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    server_url: StringProperty(name="Server URL", default=DEFAULT_URL, update=_normalise,
                               description="Address of the I-Scene server (iscene-server serve), e.g. "
                                           "http://127.0.0.1:8712; http:// is added and /v1 removed for you")
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="The server's access token (needed when it listens beyond this computer)")
    timeout: FloatProperty(name="Timeout", default=10.0, min=1.0, max=300.0, unit="TIME_ABSOLUTE",
                           description="How long to wait for the server to answer a request")
    download_timeout: FloatProperty(name="Download Timeout", default=120.0, min=5.0, max=3600.0,
                                    unit="TIME_ABSOLUTE", description="How long a result download may take")
    poll_interval: FloatProperty(name="Poll Interval", default=0.5, min=0.1, max=10.0, unit="TIME_ABSOLUTE",
                                 description="How often a running job asks the server for its progress")
    download_limit_gb: FloatProperty(name="Download Folder Limit (GB)", default=2.0, min=0.0, soft_max=100.0,
                                     description="The add-on's downloaded results are kept under this size; the "
                                                 "oldest jobs' files are removed first, never those of a job in "
                                                 "use (the objects in your .blend files stay)")
    server_command: StringProperty(name="Local Server Command", default="iscene-server serve",
                                   description="Command that starts a server on this computer (optional); the "
                                               "port of the Server URL is added unless it names --port")

    def draw(self, context):
        from .panel import draw_preferences
        draw_preferences(self, context)


def register():
    bpy.utils.register_class(ISceneAddonPreferences)


def unregister():
    bpy.utils.unregister_class(ISceneAddonPreferences)
