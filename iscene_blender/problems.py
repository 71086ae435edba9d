"""Why a button is grey: each operator's ``poll()`` asks its ``problem()`` and, when there is one, shows it as
the button's tooltip. Every reason names what the artist can do about it."""

from __future__ import annotations

from . import masks, provenance
from .client import is_loopback, normalise_url
from .preferences import network_problem, preferences
from .props import label_stats
from .pump import RUNTIME
from .server import LocalServer


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


def server_problem(context) -> str:
    """Why no request can go to the server now ('' if one may)."""
    problem = network_problem(preferences(context).server_url)
    if problem:
        return problem
    error = RUNTIME.health_error
    if error is not None:
        return f"{error.message}: {error.hint}" if error.hint else error.message
    return ""


def inputs_problem(settings) -> str:
    """Why Generate cannot send the scene settings' image and label map."""
    labels = settings.labels or masks.linked_label_map(settings.image)
    if settings.image is None or labels is None:
        return "choose an image and its label map first (or Segment the image)"
    stats = label_stats(labels)
    if stats is not None and stats.count == 0:
        return "the label map has no objects: paint each object in its own colour (background black)"
    return ""


def scene_problem(context) -> str:
    """Why no generated objects are selected to change."""
    root, selected = provenance.selected_scene(context)
    if root is None:
        if any(provenance.is_member(o) for o in context.selected_objects):
            return "the generated scene's root empty was deleted; re-import the job from the history"
        return "select objects of a generated scene"
    return "" if selected else "select the generated objects to change"


def segment_problem(context) -> str:
    """Why Segment cannot run: no image, or a server without Segment Anything."""
    if (context.scene.iscene.image or masks.active_image(context)) is None:
        return "choose the image to segment first (Image field, or open it in the Image Editor)"
    segment = (RUNTIME.health or {}).get("segment") or {}
    if segment and not segment.get("available"):
        return "the server cannot segment: install it with pip install iscene-server[segment]"
    return server_problem(context)


def local_server_problem(context) -> str:
    """Why Blender cannot start a server on this computer now."""
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


def scene_busy(root) -> bool:
    """Whether a job of this add-on is changing ``root``'s scene right now."""
    return any(job.active and job.root == root[provenance.SCENE] for job in RUNTIME.jobs.values())


def build_problem(context) -> str:
    """Why Build Meshes cannot turn the selected scene's proxies into meshes now."""
    root, _ = provenance.selected_scene(context)
    if root is None:
        return "select an object of a generated layout (Generate Scene with Layout Only)"
    if scene_busy(root):
        return "a job is still changing this scene: wait for it or cancel it"
    if not provenance.is_layout_scene(root):
        return "this scene is not a layout (it has meshes already; Regenerate makes new shapes)"
    return server_problem(context)


def variants_problem(context) -> str:
    """Why Variants… cannot make candidates for the active object now."""
    obj = context.active_object
    if provenance.is_candidate(obj):
        return "this is a candidate: Keep This One or Discard Variants first"
    if not provenance.is_instance(obj):
        return "make a generated object active"
    root = provenance.root_of(obj)
    if root is None:
        return "the generated scene's root empty was deleted; re-import the job from the history"
    if provenance.is_proxy(obj) or provenance.is_layout_scene(root):
        return "this object is a layout proxy: Build Meshes first"
    if scene_busy(root):
        return "a job is still changing this scene: wait for it or cancel it"
    return server_problem(context)


def candidate_problem(context) -> str:
    """Why Keep This One cannot keep the active object."""
    obj = context.active_object
    if not provenance.is_candidate(obj):
        return "make a variant candidate active (Variants… lays them out beside the object)"
    if provenance.original_of(obj) is None or provenance.root_of(provenance.original_of(obj)) is None:
        return "the object these candidates were made for was deleted: Discard Variants"
    return ""


def discard_problem(context) -> str:
    """Why Discard Variants has nothing to remove."""
    obj = context.active_object
    if provenance.is_candidate(obj) or provenance.candidates_of(obj):
        return ""
    return "make an object with variant candidates (or one of its candidates) active"
