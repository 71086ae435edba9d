"""Mesh post-processing (floaters, decimation, bounds) and export (GLB, 3DGS PLY)."""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import trimesh

from iscene_server.geometry import postprocess
from iscene_server.geometry.colour import linear_to_srgb, srgb_to_linear
from iscene_server.geometry.glb_reader import read_glb as read_glb_bytes
from iscene_server.geometry.glb_reader import read_instance_mesh
from iscene_server.geometry.glb_writer import (
    ExportInstance,
    GlbBuilder,
    glb_bytes,
    merge_glb,
    write_instance_glb,
    write_scene_glb,
)
from iscene_server.geometry.gltf import S_TO_GLTF
from iscene_server.geometry.ply import PLY_PROPERTIES, S_TO_PLY, GaussianCloud, write_gaussian_ply
from iscene_server.geometry.postprocess import (
    ColoredMesh,
    bounds_and_origin,
    decimate,
    remove_floaters,
    vertex_components,
)
from iscene_server.geometry.rotations import matrix_to_quaternion, quaternion_to_matrix

MODELS = {"iscene": "LuLing/IScene", "trellis": "microsoft/TRELLIS-image-large"}


def uv_sphere(rings: int, segments: int, centre=(0.0, 0.0, 0.0), radius: float = 0.3,
              noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A closed latitude/longitude sphere: two poles and ``rings - 1`` rings of ``segments`` vertices."""
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    unit = np.concatenate([[[0, 0, 1]], ring, [[0, 0, -1]]])
    scale = radius * (1 + noise * np.random.default_rng(seed).standard_normal(len(unit)))
    vertices = unit * scale[:, None] + np.asarray(centre)
    j = np.arange(segments)

    def at(r, k):
        return 1 + r * segments + k % segments

    faces = [np.stack([np.zeros_like(j), at(0, j), at(0, j + 1)], 1)]
    for r in range(rings - 2):
        faces += [np.stack([at(r, j), at(r + 1, j), at(r, j + 1)], 1),
                  np.stack([at(r, j + 1), at(r + 1, j), at(r + 1, j + 1)], 1)]
    faces.append(np.stack([np.full_like(j, len(unit) - 1), at(rings - 2, j + 1), at(rings - 2, j)], 1))
    return vertices.astype(np.float32), np.concatenate(faces).astype(np.int64)


def position_colours(vertices: np.ndarray) -> np.ndarray:
    """A colour that is a function of position, so misaligned colours are easy to detect."""
    return np.clip(vertices + 0.5, 0, 1).astype(np.float32)


def merge(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(v) for v, _ in parts])
    return (np.concatenate([v for v, _ in parts]),
            np.concatenate([f + o for (_, f), o in zip(parts, offsets[:-1], strict=True)]))


def two_coloured_sphere(rings=60, segments=80) -> ColoredMesh:
    """Red where x > 0, blue elsewhere."""
    vertices, faces = uv_sphere(rings, segments, noise=0.01)
    colours = np.where(vertices[:, :1] > 0, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    return ColoredMesh(vertices, faces, colours)


def read_glb(path: Path) -> tuple[dict, bytes]:
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0
    return json.loads(data[20:20 + json_len]), data[28 + json_len:28 + json_len + bin_len]


def accessor_array(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    dtype = {5126: "<f4", 5125: "<u4"}[accessor["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor["type"]]
    raw = binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
    return np.frombuffer(raw, dtype=dtype).reshape(accessor["count"], width)


# ---- post-processing ---------------------------------------------------------------------------

def test_components_match_a_sequential_union_find():
    rng = np.random.default_rng(3)
    faces = rng.integers(0, 400, size=(150, 3))
    parent = list(range(400))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b, c in faces:
        for u, v in ((a, b), (b, c)):
            ru, rv = find(u), find(v)
            parent[max(ru, rv)] = min(ru, rv)
    expected = np.array([find(x) for x in range(400)])
    assert np.array_equal(vertex_components(faces, 400), expected)


def test_remove_floaters_keeps_the_body_and_aligned_colours():
    body = uv_sphere(30, 40)
    medium = uv_sphere(10, 12, centre=(0.0, 0.0, 0.42), radius=0.05)  # 10 % of the body: kept
    floaters = [uv_sphere(3, 4, centre=(x, 0.4, -0.4), radius=0.01) for x in (-0.3, 0.0, 0.3)]
    vertices, faces = merge(body, medium, *floaters)
    faces = faces[np.random.default_rng(0).permutation(len(faces))]
    mesh = ColoredMesh(vertices, faces, position_colours(vertices))

    cleaned = remove_floaters(mesh, min_fraction=0.02)

    assert cleaned.face_count == len(body[1]) + len(medium[1])
    assert cleaned.vertex_count == len(body[0]) + len(medium[0])
    assert np.array_equal(cleaned.colors, position_colours(cleaned.vertices))
    assert cleaned.vertices[:, 2].max() > 0.45 and cleaned.vertices[:, 1].max() < 0.35
    assert remove_floaters(mesh, min_fraction=5.0).face_count == len(body[1])


def test_decimate_hits_the_target_and_keeps_colour_regions():
    mesh = two_coloured_sphere()
    target = 1500
    small = decimate(mesh, target)

    assert abs(small.face_count - target) <= 0.02 * target
    assert small.vertex_count < mesh.vertex_count and small.faces.max() < small.vertex_count
    assert np.all((small.colors >= 0) & (small.colors <= 1))
    x, red, blue = small.vertices[:, 0], small.colors[:, 0], small.colors[:, 2]
    away = np.abs(x) > 0.06  # a few decimated edge lengths from the colour boundary
    assert np.all((red[away] > blue[away]) == (x[away] > 0))
    assert np.mean((red > 0.9) | (blue > 0.9)) > 0.9
    assert np.abs(red + blue - 1).max() < 1e-5 and np.all(small.colors[:, 1] == 0)
    radius = np.linalg.norm(small.vertices, axis=1)
    assert np.abs(radius - 0.3).max() < 0.03


def test_decimate_is_deterministic_and_a_noop_below_target():
    mesh = two_coloured_sphere(40, 50)
    first, second = decimate(mesh, 800), decimate(mesh, 800)
    for name in ("vertices", "faces", "colors"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes()
    same = decimate(mesh, mesh.face_count)
    assert np.array_equal(same.vertices, mesh.vertices) and np.array_equal(same.faces, mesh.faces)


def test_decimate_accepts_degenerate_and_duplicate_faces(caplog):
    vertices, faces = uv_sphere(30, 40)
    faces = np.concatenate([faces, [[5, 5, 6], [7, 8, 7], [9, 10, 11], [9, 10, 11], [11, 10, 9]]])
    with caplog.at_level(logging.WARNING):
        small = decimate(ColoredMesh(vertices, faces, position_colours(vertices)), 600)
    assert caplog.text == "" and small.face_count <= 600


def test_decimate_falls_back_when_the_simplifier_disagrees_with_its_collapses(monkeypatch, caplog):
    real = postprocess.fast_simplification.simplify

    def shuffled(*args, **kwargs):
        points, faces, collapses = real(*args, **kwargs)
        return points, faces[::-1], collapses

    monkeypatch.setattr(postprocess.fast_simplification, "simplify", shuffled)
    mesh = ColoredMesh(*(lambda v, f: (v, f, position_colours(v)))(*uv_sphere(30, 40)))
    with caplog.at_level(logging.WARNING):
        small = decimate(mesh, 500)
    assert "does not match" in caplog.text
    assert abs(small.face_count - 500) <= 10
    assert np.abs(small.colors - position_colours(small.vertices)).max() < 0.1


def test_postprocess_chains_both_steps():
    vertices, faces = merge(uv_sphere(40, 50), uv_sphere(3, 4, centre=(0.45, 0, 0), radius=0.01))
    mesh = postprocess.postprocess(ColoredMesh(vertices, faces, position_colours(vertices)),
                                   min_fraction=0.02, target_faces=1000)
    assert abs(mesh.face_count - 1000) <= 20 and mesh.vertices[:, 0].max() < 0.35


def test_postprocess_leaves_no_coincident_faces():
    vertices, faces = uv_sphere(20, 20)
    faces = np.concatenate([faces, faces[:10], faces[10:15, ::-1]])  # duplicates, also with flipped winding
    mesh = postprocess.postprocess(ColoredMesh(vertices, faces, position_colours(vertices)), target_faces=None)
    assert mesh.face_count == len(faces) - 15
    assert len(np.unique(np.sort(mesh.faces, axis=1), axis=0)) == mesh.face_count


def test_bounds_and_origin_is_the_bottom_centre():
    bounds = bounds_and_origin(np.array([[-0.2, 0.1, -0.4], [0.4, 0.3, 0.2], [0.0, 0.2, 0.0]]))
    assert bounds.min == pytest.approx((-0.2, 0.1, -0.4)) and bounds.max == pytest.approx((0.4, 0.3, 0.2))
    assert bounds.origin == pytest.approx((0.1, 0.2, -0.4))
    assert bounds.to_dict()["origin"] == pytest.approx([0.1, 0.2, -0.4])


# ---- GLB ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_meshes() -> dict[int, ColoredMesh]:
    meshes = {}
    for label, centre in ((5, (0.1, 0.2, -0.1)), (12, (-0.25, -0.1, 0.15))):
        vertices, faces = uv_sphere(8, 10, centre=centre, radius=0.1)
        meshes[label] = ColoredMesh(vertices, faces, position_colours(vertices))
    return meshes


# sRGB code values and their linear values (IEC 61966-2-1), computed independently of the code under test
SRGB_KNOWN = [(0.0, 0.0), (0.04045, 0.0031308), (0.2, 0.0331048), (0.5, 0.2140411), (0.8, 0.6038273),
              (1.0, 1.0)]


def test_srgb_transfer_matches_known_values_both_ways():
    encoded, linear = np.array(SRGB_KNOWN).T
    np.testing.assert_allclose(srgb_to_linear(encoded), linear, atol=2e-7)
    np.testing.assert_allclose(linear_to_srgb(linear), encoded, atol=2e-6)
    np.testing.assert_allclose(srgb_to_linear([-0.5, 1.5]), [0.0, 1.0])  # out-of-range colours are clipped


def test_instance_glb_reloads_with_trimesh(tmp_path, small_meshes):
    encoded, linear = np.array(SRGB_KNOWN).T
    base = small_meshes[5]
    pattern = np.arange(base.vertex_count * 3).reshape(-1, 3) % len(SRGB_KNOWN)  # [V, 3] rows of the table
    mesh = ColoredMesh(base.vertices, base.faces, encoded[pattern])
    path = write_instance_glb(tmp_path / "instance_5.glb", mesh, label=5, seed=42, model_ids=MODELS,
                              extras={"frame": "S"})

    gltf, binary = read_glb(path)
    (node,) = gltf["nodes"]
    assert node["name"] == "instance_5"
    assert node["extras"] == {"label": 5, "seed": 42, "models": MODELS, "frame": "S"}
    primitive = gltf["meshes"][node["mesh"]]["primitives"][0]
    assert set(primitive["attributes"]) == {"POSITION", "NORMAL", "COLOR_0"}
    material = gltf["materials"][primitive["material"]]
    assert material["doubleSided"] and material["pbrMetallicRoughness"]["metallicFactor"] == 0
    assert "textures" not in gltf and "extensionsUsed" not in gltf
    colour = accessor_array(gltf, binary, primitive["attributes"]["COLOR_0"])
    np.testing.assert_allclose(colour, linear[pattern], atol=1e-6)  # glTF vertex colours are linear

    scene = trimesh.load(path, process=False)
    (geometry,) = scene.geometry.values()
    assert len(geometry.vertices) == mesh.vertex_count and len(geometry.faces) == mesh.face_count
    x, y, z = mesh.vertices.T
    assert np.allclose(geometry.vertices, np.stack([x, z, -y], 1), atol=1e-6)
    assert geometry.visual.vertex_attributes["color"].shape[0] == mesh.vertex_count
    assert geometry.metadata["label"] == 5 and geometry.metadata["seed"] == 42
    assert geometry.metadata["models"] == MODELS


def test_instance_glb_reads_back_into_the_scene_frame(tmp_path, small_meshes):
    mesh = small_meshes[12]
    path = write_instance_glb(tmp_path / "m.glb", mesh, label=12, seed=1, model_ids=MODELS)
    back = read_instance_mesh(path.read_bytes())
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_allclose(back.colors, mesh.colors, atol=1e-5)


def test_glb_bytes_are_deterministic_per_instance(tmp_path, small_meshes):
    def write(name: str, label: int) -> bytes:
        return write_instance_glb(tmp_path / name, small_meshes[label], label=label, seed=7,
                                  model_ids=dict(reversed(list(MODELS.items())))).read_bytes()

    first = write("a.glb", 5)
    write("b.glb", 12)
    assert write("a.glb", 5) == first and write("c.glb", 5) == first
    assert first != write("b.glb", 12)


def write_instances(folder, instances) -> list:
    return [write_instance_glb(folder / f"instance_{i.label}.glb", i.mesh, label=i.label, seed=i.seed,
                               model_ids=i.model_ids, extras=i.extras) for i in instances]


def test_scene_glb_has_one_node_per_instance(tmp_path, small_meshes):
    instances = [ExportInstance(mesh, label, 100 + label, MODELS) for label, mesh in small_meshes.items()]
    files = write_instances(tmp_path, instances)
    path = write_scene_glb(tmp_path / "scene.glb", files)
    gltf, binary = read_glb(path)
    assert [n["name"] for n in gltf["nodes"]] == ["instance_5", "instance_12"]
    assert gltf["scenes"][0]["nodes"] == [0, 1]
    assert all(set(n) == {"name", "mesh", "extras"} for n in gltf["nodes"])
    assert [n["extras"]["seed"] for n in gltf["nodes"]] == [105, 112]

    for node, instance in zip(gltf["nodes"], instances, strict=True):
        single, single_bin = read_glb(write_instance_glb(
            tmp_path / f"{node['name']}.glb", instance.mesh, label=instance.label, seed=instance.seed,
            model_ids=MODELS))
        for attribute in ("POSITION", "COLOR_0"):
            in_scene = gltf["meshes"][node["mesh"]]["primitives"][0]["attributes"][attribute]
            alone = single["meshes"][0]["primitives"][0]["attributes"][attribute]
            assert np.array_equal(accessor_array(gltf, binary, in_scene), accessor_array(single, single_bin, alone))
    assert len(trimesh.load(path, process=False).geometry) == 2
    assert len(gltf["materials"]) == 1  # the identical materials are merged
    with pytest.raises(ValueError, match="duplicate"):
        write_scene_glb(tmp_path / "bad.glb", files + files[:1])


def test_glb_builder_aligns_each_appended_binary_on_four_bytes():
    builder = GlbBuilder()
    assert [builder.append_binary(data) for data in (b"abc", b"defgh", b"", b"ij")] == [0, 4, 12, 12]
    _, binary = read_glb_bytes(builder.to_bytes())
    assert binary == b"abc\0defgh\0\0\0ij\0\0"


def test_merged_scene_keeps_each_part_binary_byte_for_byte(small_meshes):
    parts = [ExportInstance(mesh, label, 1, MODELS) for label, mesh in small_meshes.items()]
    singles = [glb_bytes([part]) for part in parts]
    merged, merged_binary = read_glb_bytes(merge_glb(singles))
    for index, single in enumerate(singles):
        document, binary = read_glb_bytes(single)
        first_view = index * len(document["bufferViews"])
        start = merged["bufferViews"][first_view]["byteOffset"]
        assert start % 4 == 0 and merged_binary[start:start + len(binary)] == binary


BLENDER_SCRIPT = textwrap.dedent("""
    import json, sys
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=sys.argv[1])
    def plain(props):
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in props.items()}
    result = []
    for ob in sorted(bpy.data.objects, key=lambda o: o.name):
        mesh = ob.data
        material = mesh.materials[0]
        result.append({
            "name": ob.name, "vertices": len(mesh.vertices), "faces": len(mesh.polygons),
            "colour_attributes": [a.name for a in mesh.color_attributes],
            "material_uses_colour": any(n.bl_idname == "ShaderNodeVertexColor" for n in material.node_tree.nodes),
            "object_props": plain(ob), "mesh_props": plain(mesh),
            "co": [list(v.co) for v in mesh.vertices],
            "matrix": [list(row) for row in ob.matrix_world],
        })
    print("RESULT" + json.dumps(result))
""")


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy (Blender as a module) not installed")
def test_scene_glb_imports_in_blender(tmp_path, small_meshes):
    instances = [ExportInstance(mesh, label, 100 + label, MODELS, {"frame": "S"})
                 for label, mesh in small_meshes.items()]
    path = write_scene_glb(tmp_path / "scene.glb", write_instances(tmp_path, instances))
    run = subprocess.run([sys.executable, "-c", BLENDER_SCRIPT, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    objects = {o["name"]: o for o in json.loads(line[len("RESULT"):])}

    assert sorted(objects) == ["instance_12", "instance_5"]
    for label, mesh in small_meshes.items():
        obj = objects[f"instance_{label}"]
        assert obj["vertices"] == mesh.vertex_count and obj["faces"] == mesh.face_count
        assert obj["colour_attributes"] == ["Color"] and obj["material_uses_colour"]
        expected = {"label": label, "seed": 100 + label, "models": MODELS, "frame": "S"}
        assert obj["object_props"] == expected and obj["mesh_props"] == expected
        assert np.allclose(obj["matrix"], np.eye(4))
        assert np.allclose(obj["co"], mesh.vertices, atol=1e-6)  # back in the z-up scene frame


# ---- 3DGS PLY ----------------------------------------------------------------------------------

def random_rotations(count: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal((count, 4))
    q[:4] = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-9, 0.6, 0.8, 0]]  # half turns: w ≈ 0
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_matrix_round_trip():
    q = random_rotations(500, np.random.default_rng(1))
    m = quaternion_to_matrix(q)
    assert np.allclose(m @ np.swapaxes(m, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(m), 1)
    back = matrix_to_quaternion(m)
    assert np.allclose(np.abs(np.sum(back * q, axis=1)), 1, atol=1e-9)
    assert np.all(back[:, 0] >= 0)
    assert np.allclose(quaternion_to_matrix([0.0, 0.0, 0.0, 1.0]), np.diag([-1.0, -1.0, 1.0]))


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    names = [line.split()[-1] for line in header if line.startswith("property")]
    return header, np.frombuffer(data[end:], dtype=[(n, "<f4") for n in names])


def test_gaussian_ply_layout_values_and_transform(tmp_path):
    rng = np.random.default_rng(2)
    count = 64
    gaussians = GaussianCloud(
        xyz=rng.uniform(-0.5, 0.5, (count, 3)), features_dc=rng.standard_normal((count, 1, 3)),
        opacity=rng.uniform(0.01, 0.99, count), scaling=rng.uniform(1e-3, 0.05, (count, 3)),
        rotation=random_rotations(count, rng))
    header, rows = read_ply(write_gaussian_ply(tmp_path / "g.ply", gaussians))

    assert header[:3] == ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
    assert header[-1] == "end_header"
    assert header[3:-1] == [f"property float {n}" for n in PLY_PROPERTIES]
    assert len(rows) == count
    column = lambda *names: np.stack([rows[n] for n in names], 1).astype(np.float64)  # noqa: E731
    x, y, z = gaussians.xyz.T
    assert np.allclose(column("x", "y", "z"), np.stack([x, -z, y], 1), atol=1e-6)
    assert np.all(column("nx", "ny", "nz") == 0)
    assert np.allclose(column("f_dc_0", "f_dc_1", "f_dc_2"), gaussians.features_dc, atol=1e-6)
    assert np.allclose(1 / (1 + np.exp(-rows["opacity"].astype(np.float64))), gaussians.opacity, atol=1e-6)
    assert np.allclose(np.exp(column("scale_0", "scale_1", "scale_2")), gaussians.scaling, rtol=1e-5)
    rotation = column("rot_0", "rot_1", "rot_2", "rot_3")
    assert np.allclose(np.linalg.norm(rotation, axis=1), 1, atol=1e-6)
    turned = S_TO_PLY @ quaternion_to_matrix(gaussians.rotation)
    assert np.allclose(quaternion_to_matrix(rotation), turned, atol=1e-5)

    _, untouched = read_ply(write_gaussian_ply(tmp_path / "s.ply", gaussians, transform=None))
    assert np.allclose(np.stack([untouched[n] for n in "xyz"], 1), gaussians.xyz, atol=1e-6)


def test_glb_and_ply_frames_differ_as_documented():
    p = np.array([0.1, 0.2, 0.3])
    assert np.allclose(S_TO_GLTF @ p, [0.1, 0.3, -0.2])
    assert np.allclose(S_TO_PLY @ p, [0.1, -0.3, 0.2])
