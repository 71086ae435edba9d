"""The scene operators: make a label map (Segment), make a scene (Generate, Build Meshes), change it (Regenerate,
Refine, Variants and their Keep / Discard, Randomize Seed, Set Size) and choose its inputs. Each ``poll()`` says
why its button is grey (:mod:`.problems`); ``execute()`` builds its request (:mod:`.job_requests`), starts the job
(:mod:`.launch`) and returns at once."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import importer, job_requests, masks, provenance
from .launch import start_job
from .problems import (
    Gated,
    build_problem,
    candidate_problem,
    discard_problem,
    inputs_problem,
    scene_problem,
    segment_problem,
    server_problem,
    variants_problem,
)
from .seeds import random_seed


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
    """Re-generate the scene coherently with your edits (locked objects stay exactly as they are; visible meshes
    with Use as Context on are kept as fixed parts of the scene)"""

    bl_idname = "iscene.refine"
    bl_label = "Refine"

    @classmethod
    def problem(cls, context) -> str:
        root, _ = provenance.selected_scene(context)
        return ("select an object of a generated scene" if root is None else "") or server_problem(context)

    def execute(self, context):
        root, _ = provenance.selected_scene(context)
        settings = context.scene.iscene
        try:
            request = job_requests.refine_request(context, root, settings.refine_selected, settings.strength)
        except ValueError as err:  # a context object over a limit: nothing is sent
            self.report({"ERROR"}, f"I-Scene: {err}")
            return {"CANCELLED"}
        start_job(context, request)
        own_meshes = request.params.get("context")
        if own_meshes:
            self.report({"INFO"}, f"I-Scene: refining around {', '.join(entry['name'] for entry in own_meshes)}")
        return {"FINISHED"}


class ISCENE_OT_build_meshes(Gated, bpy.types.Operator):
    """Turn the layout's proxies into meshes (stage 2 only, from the layout as it is on the server); each proxy
    keeps its place, name, edits and lock"""

    bl_idname = "iscene.build_meshes"
    bl_label = "Build Meshes"

    @classmethod
    def problem(cls, context) -> str:
        return build_problem(context)

    def execute(self, context):
        root, _ = provenance.selected_scene(context)
        start_job(context, job_requests.build_request(root))
        return {"FINISHED"}


class ISCENE_OT_variants(Gated, bpy.types.Operator):
    """Make candidate shapes for the active object and lay them out beside it, to keep one"""

    bl_idname = "iscene.variants"
    bl_label = "Variants…"

    count: IntProperty(name="Count", default=4, min=1, max=8, description="How many candidates to make (up to 8)")

    @classmethod
    def problem(cls, context) -> str:
        return variants_problem(context)

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        obj = context.active_object
        importer.discard_candidates(obj.get(provenance.OBJECT))  # the last round's, if any
        start_job(context, job_requests.variants_request(context, provenance.root_of(obj), obj, self.count))
        return {"FINISHED"}


class ISCENE_OT_keep_variant(Gated, bpy.types.Operator):
    """Swap the active candidate's shape into its object (the object keeps its place and edits; the candidate's
    seed is recorded), remove the other candidates, and make the kept shape the server's too, so Refine starts
    from it"""

    bl_idname = "iscene.keep_variant"
    bl_label = "Keep This One"
    bl_options = frozenset({"REGISTER", "UNDO"})

    @classmethod
    def problem(cls, context) -> str:
        return candidate_problem(context)

    def execute(self, context):
        original = importer.keep_candidate(context.active_object)
        for obj in context.view_layer.objects:
            obj.select_set(obj == original)
        context.view_layer.objects.active = original
        offline = server_problem(context)
        if offline:  # kept here; the server's scene still holds the replaced shape
            self.report({"WARNING"}, f"I-Scene: kept in Blender only ({offline}); the server's scene still has "
                                     "the shape it replaced, which a Refine would start from")
        else:
            start_job(context, job_requests.keep_request(provenance.root_of(original), original))
        return {"FINISHED"}


class ISCENE_OT_discard_variants(Gated, bpy.types.Operator):
    """Remove every candidate of the active object (or of the active candidate's object)"""

    bl_idname = "iscene.discard_variants"
    bl_label = "Discard Variants"
    bl_options = frozenset({"REGISTER", "UNDO"})

    @classmethod
    def problem(cls, context) -> str:
        return discard_problem(context)

    def execute(self, context):
        obj = context.active_object
        object_id = obj[provenance.CANDIDATE_OF] if provenance.is_candidate(obj) else obj.get(provenance.OBJECT)
        original = provenance.by_object_id([object_id]).get(object_id)
        importer.discard_candidates(object_id)
        if original is not None and original.name in context.view_layer.objects:
            context.view_layer.objects.active = original
            original.select_set(True)
        return {"FINISHED"}


class ISCENE_OT_randomize_seed(Gated, bpy.types.Operator):
    """Pick a new random seed for the selected generated objects (Regenerate then makes new shapes with it)"""

    bl_idname = "iscene.randomize_seed"
    bl_label = "Randomize Seed"
    bl_options = frozenset({"REGISTER", "UNDO"})

    @classmethod
    def problem(cls, context) -> str:
        return scene_problem(context)

    def execute(self, context):
        for obj in provenance.selected_scene(context)[1]:
            obj[importer.SEED] = random_seed()
        return {"FINISHED"}


class ISCENE_OT_set_size(Gated, bpy.types.Operator):
    """Rescale the whole generated scene about its root so the active object has this real size; every edit
    is kept"""

    bl_idname = "iscene.set_size"
    bl_label = "Set Size from Selected"
    bl_options = frozenset({"REGISTER", "UNDO"})

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
        return segment_problem(context)

    def execute(self, context):
        settings = context.scene.iscene
        image = settings.image or masks.active_image(context)
        if not image.size[0]:
            self.report({"ERROR"}, "I-Scene: the image has no pixels; save or reload it")
            return {"CANCELLED"}
        try:
            prompts = job_requests.segment_prompts(context, image, self.mode, self.annotation,
                                                   settings.points_per_side)
            request = job_requests.segment_request(image, prompts)
        except ValueError as err:
            self.report({"ERROR"}, f"I-Scene: {err}")
            return {"CANCELLED"}
        except (OSError, RuntimeError) as err:
            self.report({"ERROR"}, f"I-Scene: cannot read the image ({err})")
            return {"CANCELLED"}
        start_job(context, request)
        return {"FINISHED"}


class ISCENE_OT_use_active_image(Gated, bpy.types.Operator):
    """Use the image of the Image Editor or of the active image empty as the reference image"""

    bl_idname = "iscene.use_active_image"
    bl_label = "Use Active Image"

    @classmethod
    def problem(cls, context) -> str:
        if masks.active_image(context) is not None:
            return ""
        return "open the image in an Image Editor, or make an image empty active"

    def execute(self, context):
        context.scene.iscene.image = masks.active_image(context)  # also picks its label map, if it has one
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


CLASSES = (ISCENE_OT_generate, ISCENE_OT_segment, ISCENE_OT_regenerate, ISCENE_OT_refine, ISCENE_OT_build_meshes,
           ISCENE_OT_variants, ISCENE_OT_keep_variant, ISCENE_OT_discard_variants, ISCENE_OT_randomize_seed,
           ISCENE_OT_set_size, ISCENE_OT_use_active_image, ISCENE_OT_load_label_map)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
