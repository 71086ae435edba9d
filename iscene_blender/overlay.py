"""The label map drawn in colour over its image in the Image Editor, so the artist sees which pixels belong to
which object while segmenting or painting the map.

The Image Editor's view space is normalised over the image ((0, 0) bottom-left, (1, 1) top-right), so one
textured quad over the unit square lands exactly on the image at any zoom. The texture is the label map's own
GPU texture, which Blender keeps current while it is painted, so drawing touches no pixels in Python; a small
shader makes the background (black) transparent and the rest ``opacity``.
"""

from __future__ import annotations

import bpy

from .masks import linked_label_map

QUAD = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
VERTEX = "void main() { uv = texCoord; gl_Position = viewProjectionMatrix * vec4(pos, 0.0, 1.0); }"
FRAGMENT = ("void main() { vec4 c = texture(image, uv); float on = max(c.r, max(c.g, c.b)) > 0.5 / 255.0 ? "
            "opacity : 0.0; fragColor = vec4(c.rgb, on); }")


class _Drawing:
    """The draw handler and the compiled shader, while the overlay is registered."""

    handle = None
    shader = None


def shown_label_map(space, settings):
    """The label map to draw over the image an Image Editor shows, if any."""
    image = space.image
    labels = linked_label_map(image) or (settings.labels if image is not None and image == settings.image else None)
    if labels is None or labels == image or not labels.size[0]:
        return None
    return labels


def _overlay_shader():
    if _Drawing.shader is None:
        import gpu
        info = gpu.types.GPUShaderCreateInfo()
        info.push_constant("MAT4", "viewProjectionMatrix")
        info.push_constant("FLOAT", "opacity")
        info.sampler(0, "FLOAT_2D", "image")
        info.vertex_in(0, "VEC2", "pos")
        info.vertex_in(1, "VEC2", "texCoord")
        interface = gpu.types.GPUStageInterfaceInfo("iscene_overlay")
        interface.smooth("VEC2", "uv")
        info.vertex_out(interface)
        info.fragment_out(0, "VEC4", "fragColor")
        info.vertex_source(VERTEX)
        info.fragment_source(FRAGMENT)
        _Drawing.shader = gpu.shader.create_from_info(info)
    return _Drawing.shader


def draw() -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader
    context = bpy.context
    settings = context.scene.iscene
    labels = shown_label_map(context.space_data, settings) if settings.show_overlay else None
    if labels is None:
        return
    shader = _overlay_shader()
    batch = batch_for_shader(shader, "TRI_FAN", {"pos": QUAD, "texCoord": QUAD})
    gpu.state.blend_set("ALPHA")
    shader.bind()
    matrix = gpu.matrix.get_projection_matrix() @ gpu.matrix.get_model_view_matrix()
    shader.uniform_float("viewProjectionMatrix", matrix)
    shader.uniform_float("opacity", settings.overlay_opacity)
    shader.uniform_sampler("image", gpu.texture.from_image(labels))
    batch.draw(shader)
    gpu.state.blend_set("NONE")


def register():
    if bpy.app.background:
        return  # nothing is drawn without a window
    _Drawing.handle = bpy.types.SpaceImageEditor.draw_handler_add(draw, (), "WINDOW", "POST_VIEW")


def unregister():
    if _Drawing.handle is not None:
        bpy.types.SpaceImageEditor.draw_handler_remove(_Drawing.handle, "WINDOW")
        _Drawing.handle = None
    _Drawing.shader = None
