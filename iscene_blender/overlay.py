"""The label map drawn in colour over its image in the Image Editor, so the artist sees which pixels belong to
which object while segmenting or painting the map.

The Image Editor's view space is normalised over the image ((0, 0) bottom-left, (1, 1) top-right), so one
textured quad over the unit square lands exactly on the image at any zoom. Black (background) is transparent.
The texture is rebuilt when the map changes; while it is being painted, at most every ``masks.REFRESH_S``.
"""

from __future__ import annotations

import bpy
import numpy as np

from .masks import PixelCache, linked_label_map

QUAD = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
_handle = None
_textures = PixelCache()


def overlay_pixels(labels: bpy.types.Image, opacity: float) -> np.ndarray:
    """RGBA float32 ``[H·W·4]`` of the label map: its colours at ``opacity``, background fully transparent."""
    width, height = labels.size
    pixels = np.empty(width * height * 4, np.float32)
    labels.pixels.foreach_get(pixels)
    rgba = pixels.reshape(-1, 4)
    rgba[:, 3] = np.where(rgba[:, :3].max(axis=1) > 0.5 / 255, opacity, 0.0)
    return pixels


def shown_label_map(space, settings):
    """The label map to draw over the image an Image Editor shows, if any."""
    image = space.image
    labels = linked_label_map(image) or (settings.labels if image is not None and image == settings.image else None)
    if labels is None or labels == image or not labels.size[0]:
        return None
    return labels


def _texture(labels, opacity: float):
    import gpu

    def build():
        width, height = labels.size
        buffer = gpu.types.Buffer("FLOAT", width * height * 4, overlay_pixels(labels, opacity))
        return gpu.types.GPUTexture((width, height), format="RGBA16F", data=buffer)

    return _textures.get(labels, build, round(opacity, 3))


def draw() -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader
    context = bpy.context
    settings = context.scene.iscene
    labels = shown_label_map(context.space_data, settings) if settings.show_overlay else None
    if labels is None:
        return
    shader = gpu.shader.from_builtin("IMAGE")
    batch = batch_for_shader(shader, "TRI_FAN", {"pos": QUAD, "texCoord": QUAD})
    gpu.state.blend_set("ALPHA")
    shader.bind()
    shader.uniform_sampler("image", _texture(labels, settings.overlay_opacity))
    batch.draw(shader)
    gpu.state.blend_set("NONE")


def register():
    global _handle
    if bpy.app.background:
        return  # nothing is drawn without a window
    _handle = bpy.types.SpaceImageEditor.draw_handler_add(draw, (), "WINDOW", "POST_VIEW")


def unregister():
    global _handle
    if _handle is not None:
        bpy.types.SpaceImageEditor.draw_handler_remove(_handle, "WINDOW")
        _handle = None
    _textures.clear()
