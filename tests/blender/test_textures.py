"""Baked textures in Blender (issue 17): every object's material reads its packed texture through the UV map, its
colour attribute and viewport colour come from the texture (the GLBs have no COLOR_0), Solid viewports show the
texture, and Regenerate and Refine put the new texture into the add-on's material while the artist's override
stays."""

from __future__ import annotations

import numpy as np

from iscene_server.geometry.colour import srgb_to_linear
from iscene_server.geometry.glb_reader import read_glb, read_instance_mesh

from .test_addon import generate, instances, move_in_world, run_operator, select_only


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
    assert_colours_from_the_texture(obj, glb)


def assert_colours_from_the_texture(obj, glb: bytes) -> None:
    """No COLOR_0 in the GLB: the colour attribute is the texture at each vertex's UV (linear), the object's and
    the material's viewport colour their mean."""
    assert "COLOR_0" not in read_glb(glb)[0]["meshes"][0]["primitives"][0]["attributes"]
    expected = srgb_to_linear(read_instance_mesh(glb).colors)  # [V, 3] the server samples the texture too
    attribute = obj.data.color_attributes.active_color
    values = np.empty(len(attribute.data) * 4, np.float32)
    attribute.data.foreach_get("color", values)
    colours = values.reshape(-1, 4)  # [V, 4]
    assert np.allclose(colours[:, :3], expected, atol=1e-5) and np.allclose(colours[:, 3], 1)
    assert colours[:, :3].std() > 0.01, "not one flat (white) colour"
    mean = expected.mean(0)
    assert np.allclose(obj.color[:3], mean, atol=1e-5) and np.allclose(obj.data.materials[0].diffuse_color[:3], mean,
                                                                       atol=1e-5)
    assert 0.005 < mean.max() < 0.95, "a viewport colour, not black or white"


def test_solid_viewports_switch_to_texture_colour_once_per_import_unless_the_artist_chose(bpy, addon, inputs):
    (shading, *_) = shadings = addon.importer.view_3d_shadings()
    for each in shadings:
        each.type, each.color_type = "SOLID", "MATERIAL"
    shading.color_type = "RANDOM"  # the artist's choice
    generate(bpy, addon)
    assert shading.color_type == "RANDOM", "an artist's colour type stays"
    assert all(each.color_type == "TEXTURE" for each in shadings[1:])
    shading.color_type = "MATERIAL"
    generate(bpy, addon)  # a second import of the same (textured) scene
    assert shading.color_type == "TEXTURE", "Blender's default, Material, shows the texture after an import"


def test_objects_show_their_baked_textures_and_regenerate_and_refine_swap_them(bpy, addon, inputs, server):
    job = generate(bpy, addon)
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    objects = instances(bpy, addon, job)
    for entry in manifest["instances"]:
        assert entry["texture"] == {"mode": "baked", "size": 1024, "vertex_colors": False}
        assert_textured(objects[entry["label"]], (job.folder / entry["file"]).read_bytes())

    (shading, *_) = addon.importer.view_3d_shadings()
    shading.type, shading.color_type = "SOLID", "MATERIAL"  # set back after the import: swaps leave it alone
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

    plant = instances(bpy, addon, regenerated)[4]
    old_image = texture_node(plant.data.materials[0]).image.name
    move_in_world(plant, 0.25, 0, 0)
    inputs.refine_selected, inputs.strength = True, 0.5
    select_only(bpy, plant)
    refined = run_operator(addon, bpy.ops.iscene.refine)
    assert refined.state == "succeeded", refined.message
    manifest = server.get(f"/v1/jobs/{refined.server_id}/scene")
    assert 4 in manifest["refine"]["resampled"]
    entry = next(e for e in manifest["instances"] if e["label"] == 4)
    plant = bpy.data.objects[plant.name]
    assert plant["iscene_job"] == refined.server_id
    assert_textured(plant, (refined.folder / entry["file"]).read_bytes())
    assert old_image not in bpy.data.images, "refine swaps the texture too"
    assert shading.color_type == "MATERIAL", "regenerate and refine do not switch the viewport again"
