"""Masks without leaving Blender: annotation strokes → prompts → Segment Anything on the server (tiny SAM) →
a label-map image datablock linked to its image → Generate Scene uses it.

Blender 4.5's Python API cannot add annotation strokes (``GPencilFrame.strokes`` has no ``new``) and a headless
Blender has no editor to draw in, so the end-to-end tests hand the Segment operator an annotation with the
same structure as Blender's (layers → frames → strokes → points); a separate test checks that the RNA types
really have every attribute the reader uses.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from .test_addon import counted_objects, instances, run_operator

W, H = 320, 240


def rectangle(x0, y0, x1, y1) -> list[tuple[float, float]]:
    """A box drawn around pixels (x0, y0)–(x1, y1) (top-left origin), in annotation coordinates (y up, 0..1)."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [(x / W, 1 - y / H) for x, y in corners]


def dot(x, y) -> list[tuple[float, float]]:
    return [(x / W, 1 - y / H), ((x + 1) / W, 1 - y / H)]


def fake_annotation(layers: dict[str, list[list[tuple[float, float]]]], hidden: tuple[str, ...] = ()):
    """An object shaped like a ``bpy.types.GreasePencil`` annotation (what Blender stores for the editor)."""
    made = []
    for name, strokes in layers.items():
        frame = SimpleNamespace(strokes=[SimpleNamespace(points=[SimpleNamespace(co=(x, y, 0.0)) for x, y in s])
                                         for s in strokes])
        made.append(SimpleNamespace(info=name, annotation_hide=name in hidden, frames=[frame], active_frame=frame))
    return SimpleNamespace(layers=made)


def test_the_annotation_types_have_what_the_reader_uses(bpy):
    def properties(name):
        return set(getattr(bpy.types, name).bl_rna.properties.keys())
    assert {"layers"} <= properties("GreasePencil")
    assert {"info", "annotation_hide", "frames", "active_frame"} <= properties("GPencilLayer")
    assert {"strokes"} <= properties("GPencilFrame")
    assert {"points"} <= properties("GPencilStroke")
    assert {"co"} <= properties("GPencilStrokePoint")
    space = bpy.types.SpaceImageEditor.bl_rna.properties["grease_pencil"]
    assert space.fixed_type.identifier == "GreasePencil", "Image Editor annotations are legacy grease pencil data"


def test_strokes_become_boxes_points_and_negatives(addon):
    annotation = fake_annotation({
        "Note": [rectangle(10, 20, 110, 120), dot(50, 60), dot(200, 100), rectangle(150, 30, 300, 200)],
        "Negative": [dot(250, 50), dot(5, 230)],
        "Hidden": [rectangle(0, 0, 50, 50)],
    }, hidden=("Hidden",))
    strokes = addon.masks.annotation_strokes(annotation)
    assert len(strokes) == 6, "the hidden layer is ignored"
    prompts = addon.prompts.prompts_from_strokes(strokes, W, H)
    first, second = prompts["objects"]  # the dots inside the boxes join them instead of being objects
    assert np.allclose(first["box"], [10, 20, 110, 120]) and np.allclose(first["points"], [[50.5, 60]])
    assert np.allclose(second["box"], [150, 30, 300, 200]) and np.allclose(second["points"], [[200.5, 100]])
    assert np.allclose(second["negative"], [[250.5, 50], [5.5, 230]]), "the negative inside it, and the stray one"
    assert np.allclose(first["negative"], [[5.5, 230]]), "a negative outside every box goes to every object"


def test_a_dot_outside_every_box_is_its_own_object_and_stray_negatives_go_to_all(addon):
    annotation = fake_annotation({"Objects": [rectangle(10, 20, 110, 120), dot(200, 100)],
                                  "negatives": [dot(300, 230)]})
    prompts = addon.prompts.prompts_from_strokes(addon.masks.annotation_strokes(annotation), W, H)
    box_object, point_object = prompts["objects"]
    assert np.allclose(point_object["points"], [[200.5, 100]]) and "box" not in point_object
    assert np.allclose(box_object["negative"], [[300.5, 230]]) and np.allclose(point_object["negative"],
                                                                               [[300.5, 230]])


def test_the_overlay_shows_the_map_linked_to_the_image_shown(bpy, addon, clean_scene):
    """The overlay draws the label map's own GPU texture (kept current by Blender while painted), so nothing but
    choosing the map runs in Python; a headless Blender has no GPU to draw it with."""
    image, labels, other = (bpy.data.images.new(name, 4, 2) for name in ("photo", "labels", "other"))
    settings = bpy.context.scene.iscene
    addon.masks.link_label_map(image, labels)
    assert addon.overlay.shown_label_map(SimpleNamespace(image=image), settings) == labels
    assert addon.overlay.shown_label_map(SimpleNamespace(image=other), settings) is None
    assert addon.overlay.shown_label_map(SimpleNamespace(image=labels), settings) is None, "not over itself"


def boxes_of(labels_png: bytes) -> dict[int, tuple[int, int, int, int]]:
    ids = np.array(Image.open(io.BytesIO(labels_png)))
    boxes = {}
    for label in np.unique(ids[ids > 0]):
        ys, xs = np.nonzero(ids == label)
        boxes[int(label)] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


@pytest.fixture
def annotated(bpy, addon, inputs, small_scene, monkeypatch):
    """The reference image with a box drawn around each of its two objects, and no label map chosen."""
    inputs.labels = None
    strokes = [rectangle(*box) for box in boxes_of(small_scene[1]).values()]
    annotation = fake_annotation({"Note": strokes})
    monkeypatch.setattr(addon.masks, "annotation_for", lambda context, image, name="": annotation)
    return inputs


def test_segment_makes_a_linked_label_map_that_generate_uses(bpy, addon, annotated, server):
    image = annotated.image
    job = run_operator(addon, lambda: bpy.ops.iscene.segment(mode="PROMPTS"))
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    status = server.get(f"/v1/jobs/{job.server_id}")
    assert status["kind"] == "segment" and len(status["params"]["objects"]) == 2
    segments = server.get(f"/v1/jobs/{job.server_id}/segments")["segments"]
    labels = annotated.labels
    assert labels is not None and labels.name == "living_room_labels"
    assert addon.masks.linked_label_map(image) == labels and labels["iscene_source"] == image.name
    assert labels.packed_file is not None, "the map is saved inside the .blend"
    assert labels.colorspace_settings.name == "Non-Color"
    assert tuple(labels.size) == tuple(image.size)
    assert counted_objects(bpy, addon, labels) == len(segments) >= 1
    assert sorted(e.label for e in annotated.label_names) == sorted(s["id"] for s in segments), "a name per object"

    annotated.labels = None  # Generate Scene falls back to the map linked to the image
    generated = run_operator(addon, bpy.ops.iscene.generate)
    assert generated.state == "succeeded", f"{generated.message} ({generated.hint})"
    manifest = server.get(f"/v1/jobs/{generated.server_id}/scene")
    assert len(manifest["instances"]) == len(segments)
    assert len(instances(bpy, addon, generated)) == len(segments)


def test_choosing_an_image_picks_its_label_map(bpy, addon, annotated):
    image, painted, other = annotated.image, bpy.data.images.new("painted", W, H), bpy.data.images.new("other", W, H)
    addon.masks.link_label_map(image, painted)
    annotated.image = other
    assert annotated.labels is None, "an image without a map leaves the choice alone"
    annotated.image = image
    assert annotated.labels == painted


def test_auto_segment_finds_objects_without_prompts(bpy, addon, inputs, server):
    inputs.labels, inputs.points_per_side = None, 4
    job = run_operator(addon, lambda: bpy.ops.iscene.segment(mode="AUTO"))
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    prompts = server.get(f"/v1/jobs/{job.server_id}")["params"]
    assert prompts["auto"] is True and prompts["points_per_side"] == 4
    segments = server.get(f"/v1/jobs/{job.server_id}/segments")["segments"]
    assert counted_objects(bpy, addon, inputs.labels) == len(segments)


def test_segment_without_annotations_says_how_to_make_them(bpy, addon, inputs):
    jobs = dict(addon.pump.RUNTIME.jobs)
    with pytest.raises(RuntimeError, match="Annotate tool"):
        bpy.ops.iscene.segment(mode="PROMPTS")
    assert addon.pump.RUNTIME.jobs == jobs


def test_a_painted_label_map_is_sent_as_painted(bpy, addon, clean_scene, tmp_path, monkeypatch):
    """Painting makes the map dirty; Generate must send the painted pixels, not the file it was loaded from."""
    from iscene_server.engine.preprocess.images import decode_label_map
    ids = np.zeros((H, W), np.uint8)
    ids[20:80, 30:90], ids[100:200, 150:300] = 1, 2
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([0, 0, 0, 230, 60, 40, 40, 120, 230] + [0] * (3 * 253))
    path = tmp_path / "map.png"
    palette.save(path)
    labels = bpy.data.images.load(str(path))
    labels.colorspace_settings.name = "Non-Color"
    labels.pack()
    assert len(np.unique(decode_label_map(Image.open(io.BytesIO(addon.image_files.image_bytes(labels)))))) == 3
    assert counted_objects(bpy, addon, labels) == 2

    pixels = np.empty(W * H * 4, np.float32)
    labels.pixels.foreach_get(pixels)
    pixels = pixels.reshape(H, W, 4)
    pixels[H - 230:H - 210, 10:40, :3] = (0.2, 0.8, 0.2)  # a third object, painted (rows are bottom-up)
    labels.pixels.foreach_set(pixels.ravel())
    assert labels.is_dirty
    monkeypatch.setattr(addon.pixels, "REFRESH_S", 0.0)
    monkeypatch.setattr(addon.pixels, "MAIN_THREAD_SHARE", 1.0)
    assert counted_objects(bpy, addon, labels) == 3, "the panel's count follows the paint"
    pixels[5:15, 300:310, :3] = (0.9, 0.9, 0.1)  # a second stroke, on an image already dirty
    labels.pixels.foreach_set(pixels.ravel())
    assert counted_objects(bpy, addon, labels) == 4
    pixels[5:15, 300:310, :3] = 0.0
    labels.pixels.foreach_set(pixels.ravel())
    sent = decode_label_map(Image.open(io.BytesIO(addon.image_files.image_bytes(labels))))
    assert sent.shape == (H, W) and len(np.unique(sent)) == 4
    assert len(np.unique(sent[210:230, 10:40])) == 1 and sent[215, 20] not in (0, *np.unique(sent[20:80, 30:90]))
    assert labels.packed_file is not None and labels.is_dirty, "sending does not save over the artist's map"


@pytest.mark.parametrize("float_buffer, colour_space, expected", [
    (False, "sRGB", 128), (True, "Linear Rec.709", 188), (True, "Non-Color", 128)])
def test_in_memory_images_are_sent_as_they_look(bpy, addon, clean_scene, float_buffer, colour_space, expected):
    """A generated or painted image is encoded from its pixels: float images hold linear light (sent as sRGB),
    byte images and non-colour data are sent as stored; the first row of the PNG is the image's top."""
    image = bpy.data.images.new("in memory", 3, 2, float_buffer=float_buffer)
    image.colorspace_settings.name = colour_space
    pixels = np.zeros((2, 3, 4), np.float32)
    pixels[..., 3] = 1
    pixels[1, 0, :3] = 0.5  # the top-left pixel (Blender's rows go bottom-up)
    image.pixels.foreach_set(pixels.ravel())
    sent = np.array(Image.open(io.BytesIO(addon.image_files.image_bytes(image))))
    assert sent.shape == (2, 3, 4)
    assert tuple(sent[0, 0, :3]) == (expected,) * 3 and tuple(sent[1, 0, :3]) == (0, 0, 0)
