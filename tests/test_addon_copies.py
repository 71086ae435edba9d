"""The add-on's deliberate copies of server facts agree with their originals on shared inputs.

The Blender add-on imports nothing from the server (it ships alone as an extension), so a few server rules live
in it twice: the GLB reader and its axis convention, the sRGB encoding, the label-map id rules, the loopback
check, the context-object limits; and its own PNG encoder, segment prompts and context GLBs feed the server's
decoders. Each pair is run here on the same inputs. The add-on's pure modules are loaded from their files,
without ``bpy`` (``import iscene_blender`` needs it, and this process must not import it: tests/blender isolates
its ``bpy``).
"""

from __future__ import annotations

import ast
import importlib.util
import io
import socket
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iscene_server.api.security import is_loopback
from iscene_server.engine import seeds
from iscene_server.engine.preprocess.images import decode_label_map, open_image, to_rgb
from iscene_server.engine.refine import context as refine_context
from iscene_server.geometry.colour import linear_to_srgb, srgb_to_linear
from iscene_server.geometry.glb_reader import read_glb, read_instance_mesh
from iscene_server.geometry.glb_writer import ExportInstance, glb_bytes, merge_glb
from iscene_server.geometry.gltf import S_TO_GLTF
from iscene_server.geometry.gltf_scene import NEUTRAL_GREY, GltfError, read_scene_mesh
from iscene_server.geometry.postprocess import ColoredMesh
from iscene_server.geometry.texture.sampling import sample_bilinear
from iscene_server.segment.prompts import SegmentPrompts, parse_prompts

ADDON = Path(__file__).resolve().parents[1] / "iscene_blender"


COPY_PACKAGE = "iscene_addon_copy"


def addon_module(name: str) -> types.ModuleType:
    """``iscene_blender/<name>.py``, loaded without bpy under a private package whose ``__init__`` (which needs
    bpy) never runs; its relative imports load the other pure modules the same way."""
    if COPY_PACKAGE not in sys.modules:
        package = types.ModuleType(COPY_PACKAGE)
        package.__path__ = [str(ADDON)]
        sys.modules[COPY_PACKAGE] = package
    return importlib.import_module(f"{COPY_PACKAGE}.{name}")


PURE_MODULES = ("client", "glb", "glb_write", "png", "pixels", "prompts", "seeds")


def test_the_pure_modules_load_without_bpy():
    """Checked in a fresh interpreter: this one may hold tests/blender's ``bpy`` already."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_addon_copies as t; "
              f"[t.addon_module(n) for n in {PURE_MODULES!r}]; assert 'bpy' not in sys.modules, 'bpy imported'")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


# --- GLB reader and axes (iscene_server/geometry/glb_reader.py, gltf.py) ------------------------------------

def random_mesh(rng: np.random.Generator, vertices: int, faces: int) -> ColoredMesh:
    return ColoredMesh(rng.uniform(-0.5, 0.5, (vertices, 3)).astype(np.float32),
                       rng.integers(0, vertices, (faces, 3)), rng.uniform(0, 1, (vertices, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def instance_glbs() -> list[tuple[ExportInstance, bytes]]:
    """Two instance GLBs as the server writes them (with and without normals)."""
    rng = np.random.default_rng(14)
    first = ExportInstance(random_mesh(rng, 50, 80), 3, 1234, {"stage1": "tiny-a"}, {"name": "chair"})
    second = ExportInstance(random_mesh(rng, 7, 5), 200, 2 ** 31 - 1, {"stage2": "tiny-b"})
    return [(first, glb_bytes([first])), (second, glb_bytes([second], normals=False))]


def test_the_axis_conventions_are_inverses():
    assert np.array_equal(addon_module("glb").GLTF_TO_S @ S_TO_GLTF, np.eye(3))


def test_both_readers_read_the_same_arrays_from_the_same_bytes(instance_glbs):
    glb = addon_module("glb")
    for instance, data in instance_glbs:
        server, addon = read_instance_mesh(data), glb.read_mesh(data)
        assert np.array_equal(addon.vertices, server.vertices.astype(np.float32))
        assert np.allclose(addon.vertices, instance.mesh.vertices, atol=1e-7), "both are in the scene frame S"
        assert np.array_equal(addon.faces, server.faces) and np.array_equal(addon.faces, instance.mesh.faces)
        assert np.allclose(linear_to_srgb(addon.colors[:, :3]), server.colors, atol=1e-6)
        assert np.array_equal(addon.colors[:, 3], np.ones(len(addon.colors), np.float32)), "opaque"
        assert addon.extras == instance.node_extras() == read_glb(data)[0]["nodes"][0]["extras"]


def test_both_readers_take_the_first_instance_of_a_merged_scene(instance_glbs):
    scene = merge_glb([data for _, data in instance_glbs])
    server, addon = read_instance_mesh(scene), addon_module("glb").read_mesh(scene)
    assert np.array_equal(addon.vertices, server.vertices.astype(np.float32))
    assert np.array_equal(addon.faces, server.faces)
    assert addon.extras == instance_glbs[0][0].node_extras()


def broken_glbs(data: bytes) -> dict[str, bytes]:
    json_length = int.from_bytes(data[12:16], "little")
    bin_at = 20 + json_length
    return {"not a GLB": b"PK\x03\x04" + data[4:], "glTF 1": data[:4] + (1).to_bytes(4, "little") + data[8:],
            "truncated": data[:-10], "padded": data + b"\0\0\0\0", "header only": data[:12],
            "second chunk not binary": data[:bin_at + 4] + b"JSON" + data[bin_at + 8:]}


@pytest.mark.parametrize("damage", ["not a GLB", "glTF 1", "truncated", "padded", "header only",
                                    "second chunk not binary"])
def test_both_readers_refuse_the_same_broken_files(instance_glbs, damage):
    data = broken_glbs(instance_glbs[0][1])[damage]
    with pytest.raises(ValueError):
        addon_module("glb").read_glb(data)
    with pytest.raises((ValueError, struct.error)):  # the server's reader: a short header fails in struct
        read_glb(data)


# --- sRGB (iscene_server/geometry/colour.py) ---------------------------------------------------------------

def test_the_srgb_encodings_agree_on_the_whole_range():
    values = np.linspace(-0.1, 1.1, 2401)  # both clip outside [0, 1]
    assert np.allclose(addon_module("png").linear_to_srgb(values), linear_to_srgb(values), atol=1e-12)
    assert addon_module("png").linear_to_srgb(np.array([0.21404]))[0] == pytest.approx(0.5, abs=1e-5)
    assert np.allclose(addon_module("png").srgb_to_linear(values), srgb_to_linear(values), atol=1e-12)
    assert addon_module("png").srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.21404, abs=1e-5)


# --- Texture sampling (iscene_server/geometry/texture/sampling.py) ------------------------------------------

def test_both_bilinear_samplers_read_the_same_colours():
    """The add-on samples Blender's decoded pixels (8-bit values / 255), the server the 8-bit texels."""
    rng = np.random.default_rng(17)
    texture = rng.integers(0, 256, (37, 64, 3), dtype=np.uint8)  # not square: rows and columns not swapped
    uvs = np.concatenate([rng.uniform(-0.1, 1.1, (500, 2)), [[0, 0], [1, 1], [0.5 / 64, 0.5 / 37]]])
    addon = addon_module("png").sample_bilinear(texture / 255.0, uvs)
    assert np.allclose(addon, sample_bilinear(texture, uvs), atol=1e-12)
    assert np.allclose(addon[-1], texture[0, 0] / 255.0), "a texel centre reads that texel"
    colours = addon_module("png").texture_colours(texture / 255.0, uvs)
    assert colours.shape == (len(uvs), 4) and (colours[:, 3] == 1).all()
    assert np.allclose(colours[:, :3], srgb_to_linear(sample_bilinear(texture, uvs)), atol=1e-6)


# --- PNG files and label-map ids (iscene_server/engine/preprocess/images.py) --------------------------------

def blender_pixels(rgba: np.ndarray) -> np.ndarray:
    """What ``Image.pixels`` holds for an 8-bit RGBA image: floats in [0, 1], bottom row first, flattened."""
    return (rgba[::-1].astype(np.float32) / 255.0).ravel()


def server_ids(png: bytes) -> list[int]:
    ids = decode_label_map(open_image(png, what="label map"))
    return sorted(int(i) for i in np.unique(ids) if i)


@pytest.fixture(scope="module")
def label_maps() -> dict[str, np.ndarray]:
    """RGBA uint8 label maps the way artists and the server's segmenter make them."""
    ids = np.zeros((24, 32), np.uint8)
    ids[2:10, 3:12], ids[12:20, 5:30], ids[0:3, 28:32] = 7, 1, 255
    grey = np.dstack([ids, ids, ids, np.full_like(ids, 255)])
    coloured = np.zeros((24, 32, 4), np.uint8)
    coloured[..., 3] = 255
    coloured[2:10, 3:12, :3] = (230, 60, 40)
    coloured[12:20, 5:30, :3] = (40, 120, 230)
    coloured[20:24, 0:4, :3] = (0, 0, 9)  # blue only: id 9 · 65536
    red_only = np.zeros((24, 32, 4), np.uint8)
    red_only[..., 3] = 255
    red_only[5:9, 5:9, 0], red_only[15:19, 15:19, 0] = 3, 200  # not grey: ids are the packed colours
    return {"grey": grey, "coloured": coloured, "red only": red_only}


def test_the_server_reads_the_addons_png_as_the_same_pixels(label_maps):
    png = addon_module("png")
    for name, rgba in label_maps.items():
        data = png.encode_rgba8(rgba)
        assert np.array_equal(np.asarray(open_image(data, what="label map")), rgba), name
        assert np.array_equal(np.asarray(to_rgb(open_image(data, what="image"))), rgba[..., :3]), name


def test_the_addon_counts_the_ids_the_server_reads(label_maps):
    png, pixels = addon_module("png"), addon_module("pixels")
    for name, rgba in label_maps.items():
        counted = pixels.label_ids(pixels.colour_keys(blender_pixels(rgba)))
        assert counted == server_ids(png.encode_rgba8(rgba)), name
        assert counted, name


@pytest.mark.parametrize("linear", [False, True], ids=["non-color", "colour-managed"])
def test_a_16_bit_grey_map_counts_its_16_bit_ids_like_the_server(linear):
    """Blender holds a 16-bit PNG as float pixels (value / 65535, linearised unless the image is Non-Color);
    8-bit rounding would merge ids 1 and 2 into background and 1000 with 1001."""
    png, pixels = addon_module("png"), addon_module("pixels")
    ids = np.zeros((16, 16), np.uint16)
    ids[0:4, 0:4], ids[0:4, 8:12], ids[8:12, 0:4], ids[8:12, 8:12], ids[14:, 14:] = 1, 2, 300, 1000, 1001
    buffer = io.BytesIO()
    Image.fromarray(ids).save(buffer, format="PNG")  # mode I;16
    stored = np.repeat((ids[::-1].astype(np.float64) / 65535)[..., None], 4, axis=2)  # [H, W, 4] bottom row first
    stored[..., 3] = 1.0
    held = png.srgb_to_linear(stored) if linear else stored
    counted = pixels.float_map_ids(held.astype(np.float32).ravel(), linear)
    assert counted == server_ids(buffer.getvalue()) == [1, 2, 300, 1000, 1001]


def test_a_palette_map_counts_its_palette_indices_like_the_server():
    """The server's segmenter writes palette PNGs (ids are the indices); Blender shows their colours, and the
    add-on maps them back through the palette the segment job reported."""
    pixels = addon_module("pixels")
    indices = np.zeros((16, 16), np.uint8)
    indices[1:5, 1:5], indices[8:15, 2:9], indices[10:12, 12:15] = 1, 2, 12
    colours = {0: (0, 0, 0), 1: (230, 60, 40), 2: (40, 120, 230), 12: (90, 90, 90)}
    flat = [0] * 768
    for index, colour in colours.items():
        flat[3 * index:3 * index + 3] = colour
    image = Image.fromarray(indices, mode="P")
    image.putpalette(flat)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    rgba = np.asarray(image.convert("RGBA"))  # what Blender loads
    palette = {c[0] | (c[1] << 8) | (c[2] << 16): i for i, c in colours.items() if i}
    assert pixels.label_ids(pixels.colour_keys(blender_pixels(rgba)), palette) == server_ids(buffer.getvalue())


# --- loopback (iscene_server/api/security.py) -----------------------------------------------------------------

HOSTS = ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1", "::1%lo", "localhost",
         "LocalHost", "0.0.0.0", "::", "", "10.0.0.1", "192.168.1.20", "::ffff:10.0.0.1", "fe80::1%eth0",
         "203.0.113.5", "127.example.invalid", "127.0.0.1.nip.invalid", "studio-gpu.invalid"]


@pytest.fixture
def resolver(monkeypatch):
    """The server resolves names: ``localhost`` to loopback, every other test name to nothing (no network)."""
    def getaddrinfo(host, port, *args, **kwargs):
        if host.lower() == "localhost":
            return [(0, 0, 0, "", ("127.0.0.1", 0)), (0, 0, 0, "", ("::1", 0, 0, 0))]
        raise socket.gaierror(socket.EAI_NONAME, "not known")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("host", HOSTS)
def test_both_loopback_checks_give_the_same_answer(resolver, host):
    assert addon_module("client").is_loopback_host(host) is is_loopback(host)


def test_the_addon_checks_the_host_of_the_server_url():
    client = addon_module("client")
    assert client.is_loopback("http://[::1]:8712") and client.is_loopback("http://localhost:8712")
    assert not client.is_loopback("http://127.example.invalid:8712")


# --- segment prompts (iscene_server/segment/prompts.py) ------------------------------------------------------

def test_the_server_reads_the_addons_prompts_as_drawn():
    prompts = addon_module("prompts")
    width, height = 320, 240
    box = prompts.Stroke("Note", ((0.1, 0.9), (0.4, 0.9), (0.4, 0.5), (0.1, 0.5)))  # normalised, y up
    inside = prompts.Stroke("Note", ((0.25, 0.7),))
    alone = prompts.Stroke("Note", ((0.8, 0.2),))
    negative = prompts.Stroke("Negative", ((0.3, 0.6),))
    sent = prompts.prompts_from_strokes([box, inside, alone, negative], width, height)
    parsed = parse_prompts(SegmentPrompts.model_validate(sent), (width, height))
    boxed, dotted = parsed.objects
    assert np.allclose(boxed.box, (32, 24, 128, 120)) and np.allclose(boxed.points, [(80, 72)])
    assert np.allclose(boxed.negative, [(96, 96)]), "the negative inside the box goes to its object only"
    assert dotted.box is None and np.allclose(dotted.points, [(256, 192)]) and dotted.negative == ()
    auto = parse_prompts(SegmentPrompts.model_validate(prompts.auto_prompts(8)), (width, height))
    assert auto.auto and auto.points_per_side == 8 and auto.objects == ()


def test_a_click_on_the_images_right_or_bottom_edge_is_a_point_the_server_takes():
    prompts = addon_module("prompts")
    width, height = 320, 240
    corner = prompts.Stroke("Note", ((1.0, 0.0),))  # the bottom-right corner: pixel (320, 240) before the fix
    edge = prompts.Stroke("Negative", ((0.5, 0.0),))  # the bottom edge
    sent = prompts.prompts_from_strokes([corner, edge], width, height)
    (dotted,) = parse_prompts(SegmentPrompts.model_validate(sent), (width, height)).objects
    assert np.allclose(dotted.points, [(319.5, 239.5)]) and np.allclose(dotted.negative, [(160, 239.5)])


# --- seeds (iscene_server/engine/seeds.py) --------------------------------------------------------------------

def test_the_seed_facts_agree():
    addon = addon_module("seeds")
    assert (addon.DEFAULT_SEED, addon.SEED_LIMIT) == (seeds.DEFAULT_SEED, seeds.SEED_LIMIT)
    drawn = [addon.random_seed() for _ in range(2000)]
    assert all(0 <= seed < seeds.SEED_LIMIT for seed in drawn) and max(drawn) > seeds.SEED_LIMIT // 2


# --- context objects (iscene_server/engine/refine/context.py, geometry/gltf_scene.py) --------------------------

def addon_constants(name: str) -> dict:
    """The module-level UPPER_CASE constants of ``iscene_blender/<name>.py``, evaluated from its source (the
    module itself needs ``bpy``)."""
    tree = ast.parse((ADDON / f"{name}.py").read_text(encoding="utf-8"))
    constants: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            exec(compile(ast.Module([node], []), name, "exec"), {}, constants)
    return constants


def test_the_context_limits_agree():
    addon = addon_constants("context_objects")
    for name in ("MAX_CONTEXT_OBJECTS", "MAX_CONTEXT_FACES", "MAX_CONTEXT_GLB_MB", "CONTEXT_REACH"):
        assert addon[name] == getattr(refine_context, name), name
    assert addon["NEUTRAL_GREY"] == NEUTRAL_GREY
    assert np.allclose(linear_to_srgb(np.array(addon["GREY"][:3])), NEUTRAL_GREY, atol=1e-6), "the same grey"


def context_mesh(rng: np.random.Generator, vertices: int, faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z-up local vertices [V, 3], faces [F, 3] using every vertex, linear RGBA [V, 4]) as the add-on sends."""
    corners = np.concatenate([np.arange(vertices), rng.integers(0, vertices, faces * 3 - vertices)])
    return (rng.uniform(-0.3, 0.3, (vertices, 3)).astype(np.float32), rng.permutation(corners).reshape(faces, 3),
            rng.uniform(0, 1, (vertices, 4)).astype(np.float32))


def test_the_server_reads_the_addons_context_glb_in_the_objects_frame():
    glb, writer = addon_module("glb"), addon_module("glb_write")
    vertices, faces, colors = context_mesh(np.random.default_rng(16), 40, 70)
    data = writer.glb_bytes(vertices @ glb.GLTF_TO_S, faces, colors, "table")  # z up -> glTF y up, as sent
    assert len(data) % 4 == 0 and read_glb(data)[0]["nodes"][0]["name"] == "table"
    mesh = read_scene_mesh(data, len(faces))
    assert mesh.face_count == len(faces)
    corners = mesh.vertices[mesh.faces]  # [F, 3, 3]
    assert np.allclose(corners, vertices[faces], atol=1e-6), "the server undoes the y-up the add-on wrote"
    assert np.allclose(mesh.colors[mesh.faces], linear_to_srgb(colors[faces][..., :3]), atol=1e-5), "sRGB"
    with pytest.raises(GltfError):
        read_scene_mesh(data, len(faces) - 1)

    plain = read_scene_mesh(writer.glb_bytes(vertices @ glb.GLTF_TO_S, faces, None), len(faces))
    assert np.allclose(plain.colors, NEUTRAL_GREY), "no material anywhere: the server's grey"
    assert np.allclose(glb.read_mesh(data).vertices, vertices, atol=1e-7), "the add-on's reader agrees"
