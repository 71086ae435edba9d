"""Baked textures in Blender (issue 17): every object's material reads its packed texture through the UV map,
and Regenerate puts the new texture into the add-on's material while the artist's override stays."""

from __future__ import annotations

import numpy as np

from iscene_server.geometry.glb_reader import read_instance_mesh

from .test_addon import generate, instances, run_operator, select_only


def texture_node(material):
    (node,) = [n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage"]
    return node


def image_array(image) -> np.ndarray:
    """``image``'s pixels as 8-bit RGB rows from the top, like the GLB's PNG."""
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return np.round(pixels.reshape(height, width, 4)[::-1, :, :3] * 255).astype(np.uint8)


def assert_textured(obj, glb: bytes) -> None:
    baked = read_instance_mesh(glb)
    material = obj.data.materials[0]
    node = texture_node(material)
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node == node, "Base Color comes from the texture"
    assert node.inputs["Vector"].links[0].from_node.uv_map == "UVMap" and "UVMap" in obj.data.uv_layers
    assert node.image.packed_file is not None and node.image.colorspace_settings.name == "sRGB"
    shown = image_array(node.image)
    assert np.array_equal(shown, baked.texture)
    loops = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers["UVMap"].data.foreach_get("uv", loops)
    expected = baked.uvs[baked.faces.reshape(-1)]
    assert np.allclose(loops.reshape(-1, 2), np.stack([expected[:, 0], 1 - expected[:, 1]], 1), atol=1e-7)


def test_objects_show_their_baked_textures_and_regenerate_keeps_the_override(bpy, addon, inputs, server):
    job = generate(bpy, addon)
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    objects = instances(bpy, addon, job)
    for entry in manifest["instances"]:
        assert entry["texture"] == {"mode": "baked", "size": 1024}
        assert_textured(objects[entry["label"]], (job.folder / entry["file"]).read_bytes())

    table = objects[1]
    old_image = texture_node(table.data.materials[0]).image.name
    override = bpy.data.materials.new("artist's wood")
    table.material_slots[0].link = "OBJECT"
    table.material_slots[0].material = override
    select_only(bpy, table)
    regenerated = run_operator(addon, bpy.ops.iscene.regenerate)
    assert regenerated.state == "succeeded", regenerated.message
    entry = next(e for e in server.get(f"/v1/jobs/{regenerated.server_id}/scene")["instances"] if e["label"] == 1)
    table = bpy.data.objects[table.name]
    assert table.material_slots[0].material == override, "the artist's material stays"
    assert_textured(table, (regenerated.folder / entry["file"]).read_bytes())  # the mesh's own material: new
    assert old_image not in bpy.data.images, "the old texture goes with the old mesh"
