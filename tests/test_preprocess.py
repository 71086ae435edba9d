"""Tests of engine.preprocess: input decoding, OpenCV-compatible Lanczos, slot images and reference parity."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from iscene_server.engine.preprocess import (
    SLOT_SIZE,
    build_slots,
    crop,
    crop_bbox,
    decode_label_map,
    load_scene,
    open_image,
    resize_lanczos4,
    resize_lanczos4_rows,
    scene_from_arrays,
    slot_names,
    to_rgb,
)
from iscene_server.errors import InputError

PARITY = Path(__file__).parent / "fixtures" / "parity" / "preprocess.safetensors"


def png_bytes(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def reopen(img: Image.Image) -> Image.Image:
    """Round-trip through PNG, as a user's file would arrive."""
    return open_image(png_bytes(img), what="label map")


def simple_scene(width: int = 64, height: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ids = np.zeros((height, width), dtype=np.uint8)
    ids[10:30, 8:25] = 3
    ids[20:40, 30:60] = 7
    return rgb, ids


# --- parity with the reference implementation -------------------------------------------------------


@pytest.fixture(scope="module")
def parity():
    tensors = load_file(str(PARITY))
    scene = load_scene(png_bytes(tensors["input.scene_rgb_u8"]), png_bytes(tensors["input.label_map_u8"]))
    return tensors, build_slots(scene, "global local")


def test_parity_label_ids(parity):
    tensors, slots = parity
    assert slots.label_ids == tensors["output.label_ids"].tolist()


@pytest.mark.parametrize("i", [0, 1, 2])
def test_parity_crop_boxes(parity, i):
    tensors, slots = parity
    np.testing.assert_array_equal(np.array(slots.crop_boxes(i)), tensors[f"output.instance{i}.crop_boxes"])


@pytest.mark.parametrize("i", [0, 1, 2])
def test_parity_slot_images(parity, i):
    tensors, slots = parity
    full = slots.slots(i)
    assert full.shape == (3, 3, SLOT_SIZE, SLOT_SIZE) and full.dtype == np.float32
    np.testing.assert_allclose(full[:, :, ::4, ::4], tensors[f"output.instance{i}.cond_sub4"], rtol=0, atol=1e-5)
    wide = full.astype(np.float64)
    np.testing.assert_allclose(wide.sum(-1), tensors[f"output.instance{i}.row_sums"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(wide.sum(-2), tensors[f"output.instance{i}.col_sums"], rtol=0, atol=1e-3)


def test_global_setting_gives_the_first_two_slots(parity):
    tensors, full = parity
    scene = load_scene(png_bytes(tensors["input.scene_rgb_u8"]), png_bytes(tensors["input.label_map_u8"]))
    release = build_slots(scene, "global")
    assert release.canonical is None
    assert slot_names("global") == ["scene_space_instance", "scene_space_scene"]
    np.testing.assert_array_equal(release.slots(1), full.slots(1)[:2])
    assert release.batch().shape == (3, 2, 3, SLOT_SIZE, SLOT_SIZE)


# --- label maps -------------------------------------------------------------------------------------


def test_label_map_mode_l():
    ids = np.array([[0, 5], [9, 200]], dtype=np.uint8)
    img = reopen(Image.fromarray(ids))
    assert img.mode == "L"
    np.testing.assert_array_equal(decode_label_map(img), ids)


def test_label_map_palette_indices_are_the_ids():
    ids = np.array([[0, 1, 2], [3, 3, 0]], dtype=np.uint8)
    img = Image.frombytes("P", (3, 2), ids.tobytes())
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    img = reopen(img)
    assert img.mode == "P"
    np.testing.assert_array_equal(decode_label_map(img), ids)


def test_label_map_16_bit_ids_above_255():
    ids = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    img = reopen(Image.fromarray(ids))
    assert img.mode == "I;16"
    decoded = decode_label_map(img)
    assert decoded.dtype == np.uint32
    np.testing.assert_array_equal(decoded, ids)


def test_label_map_rgb_grey():
    ids = np.array([[0, 4], [4, 250]], dtype=np.uint8)
    img = reopen(Image.fromarray(np.stack([ids] * 3, axis=-1)))
    np.testing.assert_array_equal(decode_label_map(img), ids)


def test_label_map_rgb_packed_red_green():
    ids = np.array([[0, 7], [256, 4660]], dtype=np.uint32)
    rgb = np.stack([ids & 255, ids >> 8, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(decode_label_map(reopen(Image.fromarray(rgb))), ids)


def test_label_map_rgb_colour_coded_with_blue():
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    expected = np.array([[0, 255], [255 << 16, 10 + (20 << 8) + (30 << 16)]])
    np.testing.assert_array_equal(decode_label_map(reopen(Image.fromarray(rgb))), expected)


def test_label_map_rgba_ignores_alpha():
    rgba = np.array([[[0, 0, 0, 255], [3, 1, 0, 0]], [[9, 9, 9, 128], [3, 1, 0, 255]]], dtype=np.uint8)
    img = reopen(Image.fromarray(rgba))
    assert img.mode == "RGBA"
    np.testing.assert_array_equal(decode_label_map(img), [[0, 3 + 256], [9 + (9 << 8) + (9 << 16), 3 + 256]])


# --- scene image ------------------------------------------------------------------------------------


def test_rgba_transparent_pixels_become_black():
    rgba = np.array([[[200, 100, 50, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    rgb = np.asarray(to_rgb(Image.fromarray(rgba)))
    np.testing.assert_array_equal(rgb, [[[0, 0, 0], [10, 20, 30]]])


def test_load_scene_composites_rgba():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255
    ids = np.ones((4, 4), dtype=np.uint8)
    scene = load_scene(png_bytes(rgba), png_bytes(ids))
    assert (scene.rgb[:2] == 200).all() and (scene.rgb[2:] == 0).all()


def test_image_resized_to_label_map_size():
    rgb, ids = simple_scene(64, 48)
    big = Image.fromarray(rgb).resize((128, 96))
    scene = load_scene(png_bytes(big), png_bytes(ids))
    assert scene.rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(scene.rgb, np.asarray(big.resize((64, 48))))
    assert scene.label_ids == [3, 7]


def test_image_with_nearly_the_same_aspect_is_accepted():
    rgb, ids = simple_scene(64, 48)
    scene = load_scene(png_bytes(Image.fromarray(rgb).resize((129, 96))), png_bytes(ids))
    assert scene.size == (64, 48)


# --- errors -----------------------------------------------------------------------------------------


def test_error_corrupt_bytes():
    with pytest.raises(InputError, match=r"image data .* is not a readable image"):
        open_image(b"definitely not an image", what="image")


def test_error_truncated_png():
    rgb, _ = simple_scene()
    data = png_bytes(rgb)
    with pytest.raises(InputError, match="truncated") as info:
        open_image(data[: len(data) // 2], what="image")
    assert info.value.hint


def test_error_missing_file(tmp_path):
    missing = tmp_path / "labels.png"
    with pytest.raises(InputError, match=r"label map file .*labels\.png' does not exist"):
        load_scene(png_bytes(simple_scene()[0]), missing)


def test_error_over_the_pixel_limit(tmp_path):
    path = tmp_path / "scene.png"
    path.write_bytes(png_bytes(simple_scene(64, 48)[0]))
    with pytest.raises(InputError, match=r"64×48 \(3,072 pixels\), over the limit of 1,000 pixels"):
        open_image(path, what="image", max_pixels=1000)


def test_error_label_map_without_instances():
    rgb, ids = simple_scene()
    with pytest.raises(InputError, match="no instances") as info:
        load_scene(png_bytes(rgb), png_bytes(np.zeros_like(ids)))
    assert "id > 0" in info.value.hint


def test_error_photo_given_as_label_map():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    with pytest.raises(InputError, match="distinct ids"):
        scene_from_arrays(np.zeros((64, 64, 3), np.uint8), photo)


def test_error_different_aspect_ratio():
    rgb, ids = simple_scene(64, 48)
    with pytest.raises(InputError, match=r"64×64 but the label map is 64×48.*aspect ratios differ"):
        load_scene(png_bytes(Image.fromarray(rgb).resize((64, 64))), png_bytes(ids))


def test_error_unknown_label():
    scene = scene_from_arrays(*simple_scene())
    with pytest.raises(InputError, match="no instance with id 5") as info:
        build_slots(scene, labels=[3, 5])
    assert "3, 7" in info.value.hint


def test_error_no_labels_selected():
    scene = scene_from_arrays(*simple_scene())
    with pytest.raises(InputError, match="no instances were selected"):
        build_slots(scene, labels=[])


def test_error_instances_too_small():
    ids = np.zeros((20, 20), dtype=np.uint8)
    ids[5, 5] = 1
    with pytest.raises(InputError, match="too small") as info:
        build_slots(scene_from_arrays(np.zeros((20, 20, 3), np.uint8), ids))
    assert "3 pixels" in info.value.hint


def test_error_instance_outside_given_frame():
    scene = scene_from_arrays(*simple_scene())
    with pytest.raises(InputError, match="instance 7 lies outside the scene frame"):
        build_slots(scene, labels=[7], scene_box=(0, 0, 20, 20))


# --- slots ------------------------------------------------------------------------------------------


def test_crop_bbox_and_crop():
    mask = np.zeros((10, 10))
    mask[2:5, 3:9] = 1  # columns 3…8, rows 2…4: centre (5.5, 3), size int(5 · 1.2) = 6
    assert crop_bbox(mask) == (2.5, 0.0, 8.5, 6.0)
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # (0.5, -1.5, 2.5, 1.5) rounds half to even: (0, -2, 2, 2), rows above the image are zero.
    np.testing.assert_array_equal(crop(arr, (0.5, -1.5, 2.5, 1.5)), [[0, 0], [0, 0], [0, 1], [4, 5]])


def test_subset_keeps_the_scene_frame():
    scene = scene_from_arrays(*simple_scene())
    everything = build_slots(scene)
    subset = build_slots(scene, labels=[7])
    assert subset.label_ids == [7] and subset.scene_box == everything.scene_box
    np.testing.assert_array_equal(subset.instances[0], everything.instances[everything.index(7)])
    np.testing.assert_array_equal(subset.scene, everything.scene)


def test_selected_labels_come_in_ascending_order():
    scene = scene_from_arrays(*simple_scene())
    assert build_slots(scene, labels=[7, 3, 7]).label_ids == [3, 7]


def test_given_frame_is_used():
    scene = scene_from_arrays(*simple_scene())
    frame = (4.0, 0.0, 64.0, 60.0)
    slots = build_slots(scene, labels=[3], scene_box=frame)
    assert slots.scene_box == frame and slots.crop_boxes(0)[:3] == [frame] * 3
    assert not np.array_equal(slots.scene, build_slots(scene).scene)


def test_slot_images_are_black_outside_the_instance():
    rgb, ids = simple_scene()
    slots = build_slots(scene_from_arrays(rgb, ids), "global local")
    assert slots.slots(0).shape == (3, 3, SLOT_SIZE, SLOT_SIZE)
    for image in (slots.scene, slots.instances[0], slots.canonical[0]):
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert (image[:, :5, :5] == 0).all()


# --- Lanczos ----------------------------------------------------------------------------------------


def lanczos4_direct(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Straightforward float64 evaluation: normalised Lanczos-4 kernel sinc(t)·sinc(t/4), 8 taps, replicated
    border, taps at floor(f) - 3 … floor(f) + 4 with f = (d + 0.5)·src/dst − 0.5."""

    def taps(n_src: int, n_dst: int, d: int) -> list[tuple[int, float]]:
        f = (d + 0.5) * n_src / n_dst - 0.5
        start = math.floor(f)
        frac = f - start
        weights = [np.sinc(frac + 3 - i) * np.sinc((frac + 3 - i) / 4) for i in range(8)]
        total = sum(weights)
        return [(min(max(start - 3 + i, 0), n_src - 1), w / total) for i, w in enumerate(weights)]

    height, width = src.shape[:2]
    out = np.zeros((size[1], size[0]) + src.shape[2:])
    for dy in range(size[1]):
        for dx in range(size[0]):
            for sy, wy in taps(height, size[1], dy):
                for sx, wx in taps(width, size[0], dx):
                    out[dy, dx] += wy * wx * src[sy, sx]
    return out


def test_lanczos_same_size_is_an_exact_copy():
    img = np.random.default_rng(0).random((13, 17, 3), dtype=np.float32)
    out = resize_lanczos4(img, (17, 13))
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_lanczos_constant_stays_constant():
    img = np.full((20, 30, 3), 0.375, dtype=np.float32)
    for size in [(518, 518), (7, 5), (30, 40)]:
        np.testing.assert_allclose(resize_lanczos4(img, size), 0.375, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("shape", "size"), [((5, 7), (11, 9)), ((12, 10, 3), (4, 5)), ((9, 6, 2), (6, 13))])
def test_lanczos_matches_direct_evaluation(shape, size):
    img = np.random.default_rng(1).random(shape, dtype=np.float32)
    out = resize_lanczos4(img, size)
    assert out.dtype == np.float32 and out.shape == (size[1], size[0]) + shape[2:]
    np.testing.assert_allclose(out, lanczos4_direct(img.astype(np.float64), size), rtol=0, atol=2e-6)


def small_input(h: int, w: int, c: int) -> np.ndarray:
    return (((np.arange(h * w * c).reshape(h, w, c) * 37) % 17) / 16 - 0.25).astype(np.float32)


# Output of cv2.resize(small_input(...), size, interpolation=cv2.INTER_LANCZOS4) with
# opencv-python-headless 5.0.0 (the version the parity vectors were made with), x86-64.
OPENCV_UPSCALE_4x5x2_TO_7x6 = [
    -0.34696245193481445, -0.15607313811779022, -0.12192950397729874, 0.041932202875614166, 0.3950234353542328,
    0.5287521481513977, 0.5173448324203491, 0.7048447728157043, -0.11294981092214584, 0.19286349415779114,
    -0.16199955344200134, 0.09260035306215286, 0.3012177646160126, 0.4270302355289459, 0.211539164185524,
    0.38777726888656616, -0.05703195929527283, 0.21145150065422058, -0.010760840028524399, 0.4033821225166321,
    0.3929358720779419, 0.5804358720779419, 0.35600870847702026, -0.06299818307161331, 0.07091003656387329,
    -0.12308759242296219, -0.058214522898197174, 0.38669905066490173, 0.6608190536499023, 0.8793787360191345,
    0.2420291304588318, 0.23478953540325165, -0.09676448255777359, 0.028293520212173462, 0.20449022948741913,
    0.39199021458625793, 0.6649128794670105, 0.022669916972517967, 0.44582122564315796, -0.17384099960327148,
    -0.02334144525229931, 0.06924115866422653, 0.36825883388519287, 0.6642174124717712, 0.5966301560401917,
    0.07026258856058121, 0.4464326798915863, -0.2497834861278534, 0.04550980031490326, 0.23300980031490326,
    0.28929293155670166, 0.5401600003242493, 0.6239448189735413, 0.19272643327713013, 0.6482824683189392,
    -0.22331897914409637, 0.050800956785678864, 0.3055226504802704, 0.5510199069976807, 0.293100506067276,
    0.5210520625114441, 0.1024116799235344, -0.1429358720779419, 0.044564127922058105, -0.043871670961380005,
    0.4427472651004791, 0.5000115036964417, 0.4970984160900116, 0.7587433457374573, 0.22596080601215363,
    0.010469727218151093, 0.18527987599372864, 0.3467244505882263, 0.6184321641921997, 0.2407166212797165,
    0.5450604557991028, -0.26734477281570435, -0.07984478026628494, -0.07637780904769897, 0.043896857649087906,
    0.34331661462783813, 0.5587684512138367, 0.45834609866142273, 0.7844625115394592,
]
OPENCV_DOWNSCALE_9x11x1_TO_4x3 = [
    -0.049804024398326874, 0.3057234287261963, -0.3121821880340576, 0.3414929509162903, 0.7960129380226135,
    0.23638644814491272, 0.3198230266571045, 0.14329233765602112, 0.5079050660133362, -0.11141257733106613,
    0.6114125847816467, -0.00790508184581995,
]


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((4, 5, 2), (7, 6), OPENCV_UPSCALE_4x5x2_TO_7x6),
        ((9, 11, 1), (4, 3), OPENCV_DOWNSCALE_9x11x1_TO_4x3),
    ],
)
def test_lanczos_bit_identical_to_opencv(shape, size, expected):
    out = resize_lanczos4(small_input(*shape), size)
    np.testing.assert_array_equal(out.ravel(), np.array(expected, dtype=np.float32))


def test_lanczos_band_equals_zero_padded_image():
    band = np.random.default_rng(4).random((6, 15, 3), dtype=np.float32)
    padded = np.zeros((40, 15, 3), dtype=np.float32)
    padded[20:26] = band
    np.testing.assert_array_equal(resize_lanczos4_rows(band, 20, 40, (9, 11)), resize_lanczos4(padded, (9, 11)))


def test_lanczos_whole_factor_downscale_picks_source_pixels():
    img = np.random.default_rng(2).random((9, 12), dtype=np.float32) + 1
    np.testing.assert_allclose(resize_lanczos4(img, (4, 3)), img[1::3, 1::3], rtol=1e-7, atol=0)
