"""The add-on's GLB reader (``iscene_blender/glb.py``, a deliberate copy) reads a baked mesh's UVs and texture
as the server's reader does (its other arrays are compared in tests/test_addon_copies.py)."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from iscene_server.geometry.colour import linear_to_srgb
from iscene_server.geometry.glb_reader import read_instance_mesh
from iscene_server.geometry.glb_writer import ExportInstance, glb_bytes, merge_glb
from iscene_server.geometry.postprocess import ColoredMesh, decimate
from iscene_server.geometry.texture.bake import bake_texture

ADDON_GLB = Path(__file__).parents[1] / "iscene_blender" / "glb.py"


def addon_glb():
    spec = importlib.util.spec_from_file_location("addon_glb_copy", ADDON_GLB)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def addon_glb_png():
    spec = importlib.util.spec_from_file_location("addon_png_copy", ADDON_GLB.with_name("png.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_readers_read_the_same_uvs_and_texture():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    dense = ColoredMesh(sphere.vertices, sphere.faces, np.clip(sphere.vertices + 0.5, 0, 1))
    baked = bake_texture(decimate(dense, 300), dense, 512)
    glb = addon_glb()
    with_colours = glb_bytes([ExportInstance(baked, 1, 1, {})], vertex_colors=True)
    without = glb_bytes([ExportInstance(baked, 2, 1, {})])  # the default: no COLOR_0 on a baked mesh
    for data in (with_colours, without, merge_glb([with_colours, without])):
        server, addon = read_instance_mesh(data), glb.read_mesh(data)
        assert np.array_equal(addon.uvs, server.uvs) and np.array_equal(server.uvs, baked.uvs)
        with Image.open(io.BytesIO(addon.texture)) as png:
            assert np.array_equal(np.asarray(png.convert("RGB")), server.texture)
        assert np.array_equal(server.texture, baked.texture)
    server, addon = read_instance_mesh(with_colours), glb.read_mesh(with_colours)
    assert np.allclose(linear_to_srgb(addon.colors[:, :3]), server.colors, atol=1e-6)
    server, addon = read_instance_mesh(without), glb.read_mesh(without)
    assert (addon.colors == 1).all() and not addon.vertex_colors, "no COLOR_0: white until sampled from the texture"
    assert np.abs(server.colors - baked.colors).mean() < 0.02, "the server reads colours from the texture"
    with Image.open(io.BytesIO(addon.texture)) as png:  # Blender's decoding of the packed image, in [0, 1]
        decoded = np.asarray(png.convert("RGB")) / 255.0
    sampled = addon_glb_png().texture_colours(decoded, addon.uvs)  # [V, 4] linear, what the importer uses
    assert np.allclose(linear_to_srgb(sampled[:, :3]), server.colors, atol=1e-6), "both sample the same colours"


def test_an_untextured_mesh_has_no_uvs_in_either_reader():
    mesh = ColoredMesh(np.eye(3), [[0, 1, 2]], np.full((3, 3), 0.5))
    data = glb_bytes([ExportInstance(mesh, 1, 1, {})])
    server, addon = read_instance_mesh(data), addon_glb().read_mesh(data)
    assert server.uvs is None and server.texture is None and addon.uvs is None and addon.texture is None
