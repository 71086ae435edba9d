"""Baked meshes in the GLB files (issue 17): TEXCOORD_0, a material of their own whose base colour is the
embedded sRGB PNG, no COLOR_0 unless asked for, scene.glb merging, reading back; the texture settings on the engine
request, the API and the CLI."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import trimesh
from PIL import Image
from pydantic import ValidationError

from iscene_server.api.schemas import GenerationParams
from iscene_server.cli import build_parser
from iscene_server.engine.cleanup import CleanupTask, clean_mesh
from iscene_server.engine.pipeline import GenerationRequest
from iscene_server.engine.results import texture_entry
from iscene_server.errors import InputError
from iscene_server.geometry.glb_reader import read_glb, read_instance_mesh
from iscene_server.geometry.glb_writer import ExportInstance, glb_bytes, merge_glb
from iscene_server.geometry.gltf import CLAMP_TO_EDGE, LINEAR, LINEAR_MIPMAP_LINEAR
from iscene_server.geometry.postprocess import ColoredMesh, decimate
from iscene_server.geometry.texture.bake import bake_texture
from iscene_server.jobs.json_fields import parse_json_field
from iscene_server.jobs.runner import check_scene_params, request_from_params


@pytest.fixture(scope="module")
def baked() -> ColoredMesh:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    dense = ColoredMesh(sphere.vertices, sphere.faces, np.clip(sphere.vertices + 0.5, 0, 1))
    return bake_texture(decimate(dense, 300), dense, 512)


def embedded_png(gltf: dict, binary: bytes, material: int) -> bytes:
    texture = gltf["textures"][gltf["materials"][material]["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    image = gltf["images"][texture["source"]]
    assert image["mimeType"] == "image/png"
    view = gltf["bufferViews"][image["bufferView"]]
    assert "target" not in view, "image buffer views have no target"
    return binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]


def test_a_baked_instance_has_uvs_and_its_texture_material(baked):
    gltf, binary = read_glb(glb_bytes([ExportInstance(baked, 7, 1, {})]))
    primitive = gltf["meshes"][0]["primitives"][0]
    assert set(primitive["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    material = gltf["materials"][primitive["material"]]
    pbr = material["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0 and pbr["roughnessFactor"] == 1 and "baseColorFactor" not in pbr
    assert material["name"] == "instance_7_baked"
    sampler = gltf["samplers"][gltf["textures"][0]["sampler"]]
    assert sampler == {"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE,
                       "wrapT": CLAMP_TO_EDGE}
    with Image.open(io.BytesIO(embedded_png(gltf, binary, primitive["material"]))) as png:
        assert png.mode == "RGB" and np.array_equal(np.asarray(png), baked.texture)
    back = read_instance_mesh(glb_bytes([ExportInstance(baked, 7, 1, {})]))
    assert np.array_equal(back.uvs, baked.uvs) and np.array_equal(back.texture, baked.texture)


def attributes(data: bytes) -> dict:
    return read_glb(data)[0]["meshes"][0]["primitives"][0]["attributes"]


def test_a_baked_glb_has_no_vertex_colours_unless_asked_and_they_are_read_from_the_texture(baked):
    """glTF multiplies COLOR_0 by the base-colour texture: a baked GLB leaves it out by default."""
    data = glb_bytes([ExportInstance(baked, 7, 1, {})])
    assert "COLOR_0" not in attributes(data) and "TEXCOORD_0" in attributes(data)
    back = read_instance_mesh(data)
    assert np.abs(back.colors - baked.colors).mean() < 0.02
    kept = glb_bytes([ExportInstance(baked, 7, 1, {})], vertex_colors=True)
    assert "COLOR_0" in attributes(kept)
    assert np.allclose(read_instance_mesh(kept).colors, baked.colors, atol=1e-6)
    untextured = ColoredMesh(baked.vertices, baked.faces, baked.colors)
    assert "COLOR_0" in attributes(glb_bytes([ExportInstance(untextured, 7, 1, {})])), "unbaked keeps its colours"


def test_the_scene_glb_keeps_each_instances_texture(baked):
    untextured = ColoredMesh(baked.vertices, baked.faces, baked.colors)
    other = ColoredMesh(baked.vertices, baked.faces, baked.colors, baked.uvs, 255 - baked.texture)
    parts = [glb_bytes([ExportInstance(mesh, label, 1, {})]) for label, mesh in ((1, baked), (2, untextured),
                                                                                 (3, other))]
    gltf, binary = read_glb(merge_glb(parts))
    materials = [mesh["primitives"][0]["material"] for mesh in gltf["meshes"]]
    assert len(set(materials)) == 3 and len(gltf["textures"]) == len(gltf["images"]) == 2
    assert len(gltf["samplers"]) == 1, "the identical samplers are merged"
    for material, expected in ((materials[0], baked.texture), (materials[2], 255 - baked.texture)):
        with Image.open(io.BytesIO(embedded_png(gltf, binary, material))) as png:
            assert np.array_equal(np.asarray(png), expected)
    assert "baseColorTexture" not in gltf["materials"][materials[1]]["pbrMetallicRoughness"]


def test_textured_glbs_are_deterministic_and_load_in_trimesh(baked, tmp_path):
    first, second = glb_bytes([ExportInstance(baked, 7, 1, {})]), glb_bytes([ExportInstance(baked, 7, 1, {})])
    assert first == second
    path = tmp_path / "instance_7.glb"
    path.write_bytes(first)
    (geometry,) = trimesh.load(path, process=False).geometry.values()
    assert np.array_equal(np.asarray(geometry.visual.material.baseColorTexture.convert("RGB")), baked.texture)
    assert np.allclose(geometry.visual.uv[:, 0], baked.uvs[:, 0], atol=1e-6)  # trimesh flips v to OpenGL's


def test_texture_settings_on_the_request_the_api_and_the_cli():
    assert (GenerationRequest().texture, GenerationRequest().baked_texture_size) == ("baked", 1024)
    assert GenerationRequest(texture="vertex").baked_texture_size is None
    with pytest.raises(InputError, match="unknown texture") as error:
        GenerationRequest(texture="pbr")
    assert "baked, vertex" in error.value.hint
    with pytest.raises(InputError, match="texture size 8192") as error:
        GenerationRequest(texture_size=8192)
    assert "512 to 4096" in error.value.hint
    params = GenerationParams(texture="vertex", texture_size=2048).model_dump()
    assert (params["texture"], params["texture_size"]) == ("vertex", 2048)
    request = request_from_params(params)
    assert (request.texture, request.texture_size) == ("vertex", 2048)
    assert request_from_params({}).baked_texture_size == 1024
    for bad in ({"texture_size": 256}, {"texture": "jpeg"}):
        with pytest.raises(ValidationError):
            GenerationParams(**bad)
    args = build_parser().parse_args(["generate", "--model", "m", "--image", "i", "--labels", "l", "--out", "o",
                                      "--texture", "vertex", "--texture-size", "2048"])
    assert (args.texture, args.texture_size) == ("vertex", 2048)


def test_vertex_colours_setting_on_the_request_the_api_and_the_cli():
    assert not GenerationRequest().keeps_vertex_colors and GenerationRequest(texture="vertex").keeps_vertex_colors
    assert GenerationRequest(vertex_colors=True).keeps_vertex_colors
    with pytest.raises(InputError, match="without colour") as error:
        GenerationRequest(texture="vertex", vertex_colors=False)
    assert 'texture "baked"' in error.value.hint
    with pytest.raises(ValidationError, match="without colour"):
        GenerationParams(texture="vertex", vertex_colors=False)
    with pytest.raises(InputError, match=re.escape('leave vertex_colors unset (or true), or use texture "baked"')):
        parse_json_field('{"texture": "vertex", "vertex_colors": false}', GenerationParams, "params", "{}")
    params = GenerationParams(vertex_colors=True).model_dump()
    assert request_from_params(params).keeps_vertex_colors
    assert not request_from_params(GenerationParams().model_dump()).keeps_vertex_colors
    with pytest.raises(InputError, match="vertex_colors 1 is not"):
        check_scene_params({"vertex_colors": 1})
    check_scene_params({"vertex_colors": False})
    base = ["generate", "--model", "m", "--image", "i", "--labels", "l", "--out", "o"]
    assert build_parser().parse_args(base).vertex_colors is None
    assert build_parser().parse_args([*base, "--vertex-colors"]).vertex_colors is True
    assert build_parser().parse_args([*base, "--no-vertex-colors"]).vertex_colors is False


def test_the_manifest_entry_says_how_the_mesh_is_coloured(baked):
    assert texture_entry(baked, False) == {"mode": "baked", "size": 512, "vertex_colors": False}
    assert texture_entry(baked, True) == {"mode": "baked", "size": 512, "vertex_colors": True}
    assert texture_entry(ColoredMesh(baked.vertices, baked.faces, baked.colors), False) == {"mode": "vertex"}


def test_the_clean_up_worker_bakes_from_the_mesh_before_decimation(baked):
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    dense = ColoredMesh(sphere.vertices, sphere.faces, np.clip(sphere.vertices + 0.5, 0, 1))
    vertex = clean_mesh(CleanupTask(1, dense, 0.02, 500)).value
    textured = clean_mesh(CleanupTask(1, dense, 0.02, 500, 512)).value
    assert not vertex.textured and textured.textured and textured.texture.shape == (512, 512, 3)
    assert textured.face_count == vertex.face_count
    assert np.array_equal(textured.vertices[textured.faces], vertex.vertices[vertex.faces]), "same triangles"


def test_a_generate_job_writes_baked_instances_and_records_them(generated_scene):
    manifest = json.loads((generated_scene / "scene.json").read_text())
    for entry in manifest["instances"]:
        assert entry["texture"] == {"mode": "baked", "size": 1024, "vertex_colors": False}
        data = (generated_scene / entry["file"]).read_bytes()
        assert "COLOR_0" not in attributes(data)
        mesh = read_instance_mesh(data)
        assert mesh.textured and mesh.texture.shape == (1024, 1024, 3) and mesh.vertex_count == entry["vertices"]
    scene, _ = read_glb((generated_scene / "scene.glb").read_bytes())
    assert len(scene["textures"]) == len(manifest["instances"])
