"""Reading any writer's GLB as one mesh (geometry/gltf_scene.py): hierarchy, accessor layouts, colours, refusals."""

from __future__ import annotations

import contextlib
import copy
import json
import random
import struct

import numpy as np
import pytest
import trimesh

from iscene_server.geometry import gltf_scene
from iscene_server.geometry.colour import linear_to_srgb
from iscene_server.geometry.glb_reader import read_instance_mesh
from iscene_server.geometry.glb_writer import ExportInstance, glb_bytes, merge_glb
from iscene_server.geometry.gltf import CHUNK_BIN, CHUNK_HEADER, CHUNK_JSON, GLB_HEADER, GLB_MAGIC, GLB_VERSION
from iscene_server.geometry.gltf_scene import NEUTRAL_GREY, GltfError, read_scene_mesh
from iscene_server.geometry.postprocess import ColoredMesh

GLTF_TO_S = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # (x, y, z)_glTF -> (x, -z, y), column vectors


def glb(document: dict, binary: bytes = b"") -> bytes:
    """A GLB container around a glTF JSON document and its binary chunk."""
    document = {"asset": {"version": "2.0"}, **document}
    binary += b"\0" * (-len(binary) % 4)
    if binary:
        document.setdefault("buffers", [{"byteLength": len(binary)}])
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack(CHUNK_HEADER, len(text), CHUNK_JSON) + text
    if binary:
        chunks += struct.pack(CHUNK_HEADER, len(binary), CHUNK_BIN) + binary
    return struct.pack(GLB_HEADER, GLB_MAGIC, GLB_VERSION, 12 + len(chunks)) + chunks


def triangle_soup(vertices: np.ndarray, faces: np.ndarray, decimals: int = 5) -> np.ndarray:
    """Triangles as rows of their 9 corner coordinates, in a canonical order (for comparing meshes whose vertex
    numbering differs): ``[F, 9]`` sorted."""
    corners = np.round(np.asarray(vertices, dtype=np.float64)[np.asarray(faces)], decimals)  # [F, 3, 3]
    rows = np.array([sorted(map(tuple, triangle)) for triangle in corners]).reshape(len(corners), 9)
    return rows[np.lexsort(rows.T[::-1])]


def key(point) -> tuple[float, ...]:
    """A position (or colour) as a rounded tuple of Python floats, to look it up whatever its float type."""
    return tuple(round(float(x), 4) + 0.0 for x in point)


def corner_colours(mesh) -> dict[tuple, tuple]:
    """Colour of each vertex position used by a triangle."""
    return {key(mesh.vertices[i]): key(mesh.colors[i]) for i in mesh.faces.ravel()}


def trimesh_scene():
    """Two meshes with different materials under a parent/child node hierarchy."""
    box = trimesh.creation.box(extents=(0.1, 0.2, 0.3))
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=np.tile([255, 0, 0, 255], (8, 1)))
    ball = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    factor = [0.0, 0.5, 1.0, 1.0]
    ball.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=factor))
    scene = trimesh.Scene()
    scene.add_geometry(box, node_name="box", geom_name="box",
                       transform=trimesh.transformations.translation_matrix((0.1, 0.2, -0.1)))
    scene.add_geometry(ball, node_name="ball", geom_name="ball", parent_node_name="box",
                       transform=trimesh.transformations.rotation_matrix(0.7, (1, 0, 0)) @ np.diag([2, 1, 1, 1.0]))
    return scene, box, ball


def test_trimesh_scene_with_hierarchy_and_materials_reads_in_the_undone_y_up_frame():
    scene, box, ball = trimesh_scene()
    mesh = read_scene_mesh(scene.export(file_type="glb"), max_faces=1000)
    expected_vertices, expected_faces, offset = [], [], 0
    for name, geometry in (("box", box), ("ball", ball)):
        world, _ = scene.graph.get(name)
        placed = geometry.vertices @ world[:3, :3].T + world[:3, 3]
        expected_vertices.append(placed @ GLTF_TO_S.T)
        expected_faces.append(geometry.faces + offset)
        offset += len(geometry.vertices)
    expected_vertices, expected_faces = np.concatenate(expected_vertices), np.concatenate(expected_faces)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32 and mesh.colors.dtype == np.float32
    assert np.allclose(triangle_soup(mesh.vertices, mesh.faces), triangle_soup(expected_vertices, expected_faces),
                       atol=1e-5)
    colours = corner_colours(mesh)
    red = {colours[key(v)] for v in expected_vertices[:len(box.vertices)]}
    blue = {colours[key(v)] for v in expected_vertices[len(box.vertices):]}
    assert red == {(1.0, 0.0, 0.0)}
    assert blue == {key(linear_to_srgb(np.array([0.0, 128 / 255, 1.0])))}


def interleaved_document() -> tuple[dict, bytes]:
    """A hand-built file: an interleaved POSITION + normalised u8 COLOR_0 view (byteStride 16) indexed by u8, a
    u16-indexed primitive with only a baseColorFactor, an unindexed primitive without a material, a points
    primitive (skipped), nodes with a matrix, TRS and a hierarchy."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype="<f4")  # [4, 3] glTF frame
    rgba = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [255, 255, 255, 0]], dtype="<u1")
    interleaved = b"".join(p.tobytes() + c.tobytes() for p, c in zip(positions, rgba, strict=True))  # 16 B each
    u8 = np.array([0, 1, 2, 0, 2, 3], dtype="<u1").tobytes() + b"\0\0"  # 6 indices, padded to 8
    u16 = np.array([3, 2, 1], dtype="<u2").tobytes() + b"\0\0"
    loose = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]], dtype="<f4").tobytes()
    binary = interleaved + u8 + u16 + loose
    views = [
        {"buffer": 0, "byteOffset": 0, "byteLength": 64, "byteStride": 16},
        {"buffer": 0, "byteOffset": 64, "byteLength": 6},
        {"buffer": 0, "byteOffset": 72, "byteLength": 6},
        {"buffer": 0, "byteOffset": 80, "byteLength": 36},
    ]
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3"},
        {"bufferView": 0, "byteOffset": 12, "componentType": 5121, "normalized": True, "count": 4, "type": "VEC4"},
        {"bufferView": 1, "componentType": 5121, "count": 6, "type": "SCALAR"},
        {"bufferView": 2, "componentType": 5123, "count": 3, "type": "SCALAR"},
        {"bufferView": 3, "componentType": 5126, "count": 3, "type": "VEC3"},
    ]
    meshes = [
        {"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2},
                        {"attributes": {"POSITION": 0}, "mode": 0}]},  # points: skipped
        {"primitives": [{"attributes": {"POSITION": 0}, "indices": 3, "material": 0, "mode": 4}]},
        {"primitives": [{"attributes": {"POSITION": 4}}]},  # no indices, no material
    ]
    half_turn_about_y = [0.0, 1.0, 0.0, 0.0]  # quaternion xyzw
    nodes = [
        {"matrix": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 10, 0, 0, 1], "mesh": 0, "children": [1]},  # x + 10
        {"translation": [0, 5, 0], "rotation": half_turn_about_y, "scale": [2, 2, 2], "mesh": 1, "children": [2]},
        {"mesh": 2},
        {"mesh": 0},  # not in the scene: ignored
    ]
    document = {"scene": 0, "scenes": [{"nodes": [0]}], "nodes": nodes, "meshes": meshes,
                "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [0.2, 0.4, 0.6, 1.0]}}],
                "accessors": accessors, "bufferViews": views}
    return document, binary


def s_frame(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ GLTF_TO_S.T


def test_hand_built_glb_with_interleaved_stride_small_indices_and_each_colour_source():
    mesh = read_scene_mesh(glb(*interleaved_document()), max_faces=10)
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    first = positions + [10, 0, 0]  # node 0: the matrix
    rotate = np.diag([-1.0, 1.0, -1.0])  # half turn about y
    second_world = (positions * 2) @ rotate.T + [0, 5, 0] + [10, 0, 0]  # node 1 under node 0
    loose = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]])
    third = (loose * 2) @ rotate.T + [0, 5, 0] + [10, 0, 0]  # node 2 under node 1
    expected = np.concatenate([s_frame(first), s_frame(second_world), s_frame(third)])
    faces = np.array([[0, 1, 2], [0, 2, 3], [7, 6, 5], [8, 9, 10]])
    assert np.allclose(triangle_soup(mesh.vertices, mesh.faces), triangle_soup(expected, faces), atol=1e-5)
    colours = corner_colours(mesh)
    first_colours = [colours[key(v)] for v in s_frame(first)]
    assert first_colours == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)]  # alpha dropped
    factor = key(linear_to_srgb(np.array([0.2, 0.4, 0.6])))
    assert {colours[key(v)] for v in s_frame(second_world)[1:]} == {factor}
    assert {colours[key(v)] for v in s_frame(third)[1:]} == {(NEUTRAL_GREY,) * 3}
    assert mesh.face_count == 4


def test_scene_without_scenes_reads_every_root_node():
    document, binary = interleaved_document()
    del document["scene"], document["scenes"]
    document["nodes"][3] = {"mesh": 2, "translation": [0, 0, 100]}  # a second root
    mesh = read_scene_mesh(glb(document, binary), max_faces=10)
    assert mesh.face_count == 5


def test_float_colours_times_the_base_colour_factor():
    document, binary = interleaved_document()
    colours = np.array([[0.5, 0.5, 0.5]] * 3, dtype="<f4").tobytes()
    document["bufferViews"].append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(colours)})
    document["accessors"].append({"bufferView": 4, "componentType": 5126, "count": 3, "type": "VEC3"})
    document["meshes"][2]["primitives"][0].update({"attributes": {"POSITION": 4, "COLOR_0": 5}, "material": 0})
    document["scenes"][0]["nodes"] = [2]
    mesh = read_scene_mesh(glb(document, binary + colours), max_faces=10)
    assert np.allclose(mesh.colors, linear_to_srgb(np.array([0.1, 0.2, 0.3]))[None], atol=1e-6)


def test_server_instance_glbs_read_back_like_glb_reader():
    rng = np.random.default_rng(3)
    vertices, colors = rng.uniform(-0.4, 0.4, (30, 3)), rng.uniform(0, 1, (30, 3))
    faces = rng.integers(0, 30, (40, 3))
    data = glb_bytes([ExportInstance(ColoredMesh(vertices, faces, colors), 3, 0, {})])
    ours, theirs = read_scene_mesh(data, max_faces=40), read_instance_mesh(data)
    assert np.allclose(ours.vertices[ours.faces], theirs.vertices[theirs.faces], atol=1e-6)
    assert np.allclose(ours.colors[ours.faces], theirs.colors[theirs.faces], atol=1e-5)
    assert np.allclose(ours.vertices[ours.faces], vertices[faces], atol=1e-6)  # and that is S itself
    other = ColoredMesh(vertices[:10] + 0.05, faces[:5] % 10, colors[:10])
    merged = merge_glb([data, glb_bytes([ExportInstance(other, 4, 0, {})])])  # a scene.glb: one node per instance
    both = read_scene_mesh(merged, max_faces=45)
    expected = np.concatenate([vertices[faces], other.vertices[other.faces]])
    assert np.allclose(both.vertices[both.faces], expected, atol=1e-6)


def small_triangle_file(**changes) -> tuple[dict, bytes]:
    """One triangle: POSITION (accessor 0) and u16 indices (accessor 1)."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype="<f4").tobytes()
    indices = np.array([0, 1, 2], dtype="<u2").tobytes() + b"\0\0"
    document = {
        "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"},
                      {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36,
                                                                           "byteLength": 6}],
        **changes,
    }
    return document, positions + indices


def test_small_triangle_file_reads():
    mesh = read_scene_mesh(glb(*small_triangle_file()), max_faces=1)
    assert mesh.face_count == 1 and np.allclose(mesh.vertices[2], [0, 0, 1])


def refusal(data: bytes, max_faces: int = 100) -> str:
    with pytest.raises(GltfError) as caught:
        read_scene_mesh(data, max_faces)
    return str(caught.value)


def test_refuses_files_that_are_not_glb():
    assert "not a glTF 2.0 binary" in refusal(b"")
    assert "not a glTF 2.0 binary" in refusal(b"solid cube\nfacet normal 0 0 1\n" * 4)
    assert "glTF version 1.0, not glTF 2.0" in refusal(glb({"asset": {"version": "1.0"}}))
    text = b"{oops   "
    broken = struct.pack(GLB_HEADER, GLB_MAGIC, GLB_VERSION, 20 + len(text)) + struct.pack(
        CHUNK_HEADER, len(text), CHUNK_JSON) + text
    assert "not valid JSON" in refusal(broken)
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = struct.pack(GLB_HEADER, GLB_MAGIC, GLB_VERSION, 20 + len(deep)) + struct.pack(
        CHUNK_HEADER, len(deep), CHUNK_JSON) + deep
    assert "not valid JSON" in refusal(nested)


def test_refuses_an_accessor_past_the_end_of_the_buffer_as_truncated():
    document, binary = small_triangle_file()
    document["accessors"][0]["count"] = 30
    document["bufferViews"][0]["byteLength"] = 360
    assert "truncated" in refusal(glb(document, binary))
    data = glb(*small_triangle_file())
    assert "truncated" in refusal(cut_binary(data))
    assert "truncated" in refusal(data[:-4])  # the file itself cut short


def cut_binary(data: bytes) -> bytes:
    """The GLB with its binary chunk cut short (headers rewritten to match, so only the accessors overrun)."""
    json_length = struct.unpack_from("<I", data, 12)[0]
    head = data[:20 + json_length]
    binary = data[28 + json_length:28 + json_length + 12]
    body = head[12:] + struct.pack(CHUNK_HEADER, len(binary), CHUNK_BIN) + binary
    return struct.pack(GLB_HEADER, GLB_MAGIC, GLB_VERSION, 12 + len(body)) + body


@pytest.mark.parametrize("extension", ["KHR_draco_mesh_compression", "EXT_meshopt_compression"])
def test_refuses_compressed_geometry_with_the_fix(extension):
    document, binary = small_triangle_file(extensionsRequired=[extension], extensionsUsed=[extension])
    assert "without Draco/meshopt compression" in refusal(glb(document, binary))


def test_refuses_unknown_required_extensions_but_not_material_ones():
    assert "KHR_future_geometry" in refusal(glb(*small_triangle_file(extensionsRequired=["KHR_future_geometry"])))
    read_scene_mesh(glb(*small_triangle_file(extensionsRequired=["KHR_materials_unlit"])), max_faces=1)


def test_refuses_external_buffers():
    document, binary = small_triangle_file(buffers=[{"byteLength": 44, "uri": "mesh.bin"}])
    assert "single .glb" in refusal(glb(document, binary))


def test_refuses_sparse_accessors():
    document, binary = small_triangle_file()
    document["accessors"][0]["sparse"] = {"count": 1, "indices": {}, "values": {}}
    assert "sparse" in refusal(glb(document, binary))


def test_refuses_an_index_out_of_range():
    document, binary = small_triangle_file()
    binary = binary[:36] + np.array([0, 1, 3], dtype="<u2").tobytes() + b"\0\0"
    assert "out of range" in refusal(glb(document, binary))


def test_refuses_non_finite_positions():
    document, binary = small_triangle_file()
    binary = np.array([[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]], dtype="<f4").tobytes() + binary[36:]
    assert "not finite" in refusal(glb(document, binary))


def test_refuses_too_many_triangles_before_decoding_them(monkeypatch):
    document, binary = small_triangle_file()
    document["accessors"][1]["count"] = 3 * 10 ** 9  # claims 10^9 triangles in a 44-byte buffer

    def no_decoding(*args):
        raise AssertionError("decoded an accessor before checking the triangle count")

    monkeypatch.setattr(gltf_scene.GltfScene, "accessor", no_decoding)
    assert refusal(glb(document, binary), max_faces=200_000) == \
        "it has 1000000000 triangles, over the limit of 200000"
    assert "over the limit of 0" in refusal(glb(*small_triangle_file()), max_faces=0)


def test_refuses_accessors_without_data_or_with_the_wrong_types():
    document, binary = small_triangle_file()
    del document["accessors"][0]["bufferView"]
    assert "no data" in refusal(glb(document, binary))
    document, binary = small_triangle_file()
    document["accessors"][0]["componentType"] = 5123  # u16 positions (quantised)
    assert "not float32 VEC3" in refusal(glb(document, binary))
    document, binary = small_triangle_file()
    document["accessors"][1]["componentType"] = 5126
    assert "not unsigned" in refusal(glb(document, binary))
    document, binary = small_triangle_file()
    document["accessors"][1]["count"] = 4
    document["bufferViews"][1]["byteLength"] = 8
    assert "not a multiple of 3" in refusal(glb(document, binary))
    document, binary = small_triangle_file()
    document["bufferViews"][0]["byteStride"] = 4  # shorter than one VEC3
    assert "invalid byte offset, length or stride" in refusal(glb(document, binary))


def test_refuses_files_without_triangles():
    document, binary = small_triangle_file()
    document["meshes"][0]["primitives"][0]["mode"] = 1  # lines
    assert "no triangles" in refusal(glb(document, binary))
    assert "no triangles" in refusal(glb(*small_triangle_file(nodes=[{}])))


def test_refuses_node_cycles_and_malformed_references():
    assert "not a tree" in refusal(glb(*small_triangle_file(nodes=[{"mesh": 0, "children": [0]}])))
    deep = [{"children": [i + 1]} for i in range(80)] + [{"mesh": 0}]
    assert "deeper than" in refusal(glb(*small_triangle_file(nodes=deep)))
    assert "does not exist" in refusal(glb(*small_triangle_file(nodes=[{"mesh": 7}])))
    assert "malformed" in refusal(glb(*small_triangle_file(nodes=[{"mesh": 0, "rotation": [0, 0, 0, 0]}])))
    document, binary = small_triangle_file()
    document["meshes"][0]["primitives"][0]["attributes"] = {}
    assert "malformed" in refusal(glb(document, binary))


def test_a_mesh_used_by_two_nodes_is_placed_twice_and_counted_twice():
    nodes = [{"mesh": 0}, {"mesh": 0, "translation": [0, 0, 5]}]
    document, binary = small_triangle_file(nodes=nodes, scenes=[{"nodes": [0, 1]}])
    mesh = read_scene_mesh(glb(document, binary), max_faces=2)
    assert mesh.face_count == 2
    assert np.allclose(sorted(mesh.vertices[:, 1]), [-5, -5, -5, 0, 0, 0])  # glTF z -> -y in S
    assert "2 triangles, over the limit of 1" in refusal(glb(document, binary), max_faces=1)


def test_random_damage_is_always_refused_as_gltf_error():
    """Mutated JSON values and flipped bytes either read or raise GltfError (never another exception)."""
    rng = random.Random(5)
    document, binary = interleaved_document()
    paths = []

    def walk(value, path):
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
        for key, child in items:
            paths.append((*path, key))
            walk(child, (*path, key))

    walk(document, ())
    replacements = [None, -1, 0, 3, 2 ** 40, 10 ** 400, 1.5, "x", [], {}, [1, 2], True, "VEC3", 5121, 1e308]
    for _ in range(400):
        damaged = copy.deepcopy(document)
        path = rng.choice(paths)
        parent = damaged
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = rng.choice(replacements)
        with contextlib.suppress(GltfError):
            read_scene_mesh(glb(damaged, binary), max_faces=100)
    data = glb(document, binary)
    for _ in range(400):
        flipped = bytearray(data)
        for _ in range(3):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        with contextlib.suppress(GltfError):
            read_scene_mesh(bytes(flipped[:rng.randrange(20, len(flipped) + 1)]), max_faces=100)
