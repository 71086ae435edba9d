"""The extension package: ``build.py`` output and checks, then install, enable and a clean disable in ``bpy``."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from .conftest import (
    ADDON_MODULE,
    BUILD_SCRIPT,
    HAVE_BPY,
    MANIFEST,
    WATCHED_TYPES,
    Snapshot,
    disable_addon,
    enable_addon,
    owned_handlers,
    run_build,
)

needs_bpy = pytest.mark.skipif(not HAVE_BPY, reason="bpy (Blender as a Python module) is not installed")


def load_build_module():
    """``build.py`` imported as a module (registered in ``sys.modules``, which its dataclasses need)."""
    name = "iscene_build_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def zip_names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return set(archive.namelist())


@dataclass(frozen=True)
class FakeSource:
    """A copy of the repository's manifest plus a tiny add-on package, in a temporary folder."""

    manifest: Path
    package: Path
    output: Path

    def build(self, *options: str, python: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess:
        return run_build("--manifest", self.manifest, "--package", self.package, "--output-dir", self.output,
                         *options, python=python)

    def edit_manifest(self, old: str, new: str) -> None:
        text = self.manifest.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in the copied manifest"
        self.manifest.write_text(text.replace(old, new, 1), encoding="utf-8")

    def write_module(self, name: str, source: str) -> None:
        (self.package / name).write_text(source, encoding="utf-8")


FAKE_INIT = """\
from . import helper


def register():
    helper.register()


def unregister():
    helper.unregister()
"""
FAKE_HELPER = """\
import json
import queue
from urllib.request import urlopen

import bpy
import numpy as np
from mathutils import Matrix


def register():
    pass


def unregister():
    pass
"""


@pytest.fixture
def fake_source(tmp_path) -> FakeSource:
    package = tmp_path / "iscene_blender"
    package.mkdir()
    source = FakeSource(tmp_path / "blender_manifest.toml", package, tmp_path / "out")
    shutil.copyfile(MANIFEST, source.manifest)
    source.write_module("__init__.py", FAKE_INIT)
    source.write_module("helper.py", FAKE_HELPER)
    return source


def assert_fails(result: subprocess.CompletedProcess, *words: str) -> None:
    """build.py exited non-zero, wrote no zip path, and its error message names every one of ``words``."""
    assert result.returncode != 0, f"build.py should have failed:\n{result.stdout}{result.stderr}"
    assert "build.py: error:" in result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in:\n{result.stderr}"


def test_zip_is_named_after_manifest_id_and_version(extension_zip):
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    assert manifest["id"] == "iscene"
    assert extension_zip.name == f"iscene-{manifest['version']}.zip"
    assert extension_zip.is_file()


def test_bundled_validator_accepts_the_zip(extension_zip):
    validator = load_build_module().find_validator()
    result = validator.run("validate", str(extension_zip))
    assert result.returncode == 0, result.stdout + result.stderr


def test_zip_has_the_extension_root_at_its_top(extension_zip):
    names = zip_names(extension_zip)
    assert {"blender_manifest.toml", "__init__.py"} <= names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.split("/")[0] in {"tests", "test"}]
    assert not [name for name in names if any(part.startswith(".") for part in name.split("/"))]


@pytest.mark.parametrize("options", [
    pytest.param((), marks=needs_bpy, id="blender_ext"),
    pytest.param(("--no-validate",), id="zipfile"),
])
def test_build_ships_only_the_package_files(fake_source, options):
    junk = {"__pycache__/helper.cpython-311.pyc": b"", "stray.pyc": b"", ".hidden": b"", "tests/test_x.py": b"",
            "test_helper.py": b"", ".git/config": b""}
    for name, content in junk.items():
        (fake_source.package / name).parent.mkdir(parents=True, exist_ok=True)
        (fake_source.package / name).write_bytes(content)
    (fake_source.package / "data").mkdir()
    (fake_source.package / "data" / "defaults.json").write_text("{}")
    result = fake_source.build(*options)
    assert result.returncode == 0, result.stdout + result.stderr
    zip_path = Path(result.stdout.strip().splitlines()[-1])
    assert zip_path.parent == fake_source.output
    assert zip_names(zip_path) == {"blender_manifest.toml", "__init__.py", "helper.py", "data/defaults.json"}


def test_fake_package_builds(fake_source):
    """The control for the failure tests below: the unmodified fake source is accepted."""
    result = fake_source.build("--no-validate")
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_without_license_fails(fake_source):
    fake_source.edit_manifest("license =", "# license =")
    assert_fails(fake_source.build("--no-validate"), "license")


def test_manifest_with_wheels_fails(fake_source):
    fake_source.manifest.write_text(
        'wheels = ["./wheels/requests-2.32.3-py3-none-any.whl"]\n' + fake_source.manifest.read_text())
    assert_fails(fake_source.build("--no-validate"), "wheels")


@pytest.mark.parametrize("statement", ["import iscene_blender", "from iscene_blender import helper",
                                       "from iscene_blender.helper import register", "import bl_ext.user_default"])
def test_absolute_self_import_fails(fake_source, statement):
    fake_source.write_module("other.py", f"{statement}\n")
    assert_fails(fake_source.build("--no-validate"), "other.py:1", "self-import")


def test_bl_info_fails(fake_source):
    fake_source.write_module("__init__.py", 'bl_info = {"name": "I-Scene"}\n' + FAKE_INIT)
    assert_fails(fake_source.build("--no-validate"), "__init__.py:1", "bl_info")


@pytest.mark.parametrize("statement", ["import requests", "from PIL import Image", "import trimesh.exchange"])
def test_third_party_import_fails(fake_source, statement):
    fake_source.write_module("helper.py", FAKE_HELPER + f"\n\ndef late():\n    {statement}\n")
    assert_fails(fake_source.build("--no-validate"), "helper.py:", statement.split()[1].split(".")[0])


def test_implicit_relative_import_fails(fake_source):
    fake_source.write_module("other.py", "import helper\n")
    assert_fails(fake_source.build("--no-validate"), "other.py:1", "from . import helper")


def test_every_problem_is_reported_at_once(fake_source):
    fake_source.write_module("other.py", "import requests\nimport iscene_blender\nbl_info = {}\n")
    assert_fails(fake_source.build("--no-validate"), "other.py:1", "other.py:2", "other.py:3")


@needs_bpy
def test_validator_complaint_fails(fake_source):
    fake_source.edit_manifest("\nversion = ", '\nversion = "1.0"\n# version = ')
    assert_fails(fake_source.build(), "blender_ext.py validate", "version")


def test_validation_without_bpy_is_an_error_not_a_skip(fake_source):
    """``python -S`` leaves site-packages (and so ``bpy``) off the path, as on a machine without the wheel."""
    without_site = (sys.executable, "-S")
    assert_fails(fake_source.build(python=without_site), "bpy", "--no-validate")
    assert fake_source.build("--no-validate", python=without_site).returncode == 0


def test_addon_loads_as_an_extension_module(addon, blender_user_dir):
    assert addon.__name__ == ADDON_MODULE == "bl_ext.user_default.iscene"
    assert Path(addon.__file__).resolve().is_relative_to(blender_user_dir.resolve())
    assert sys.modules[ADDON_MODULE] is addon


def test_addon_preferences_are_registered_under_the_module_name(bpy, addon):
    entry = bpy.context.preferences.addons[ADDON_MODULE]
    assert entry.preferences is not None, "no AddonPreferences with bl_idname = __package__"
    assert entry.preferences.bl_rna.identifier != "AddonPreferences"


def test_clean_scene_keeps_the_addon_enabled(bpy, addon, clean_scene):
    assert len(bpy.data.objects) == 0
    assert clean_scene == bpy.context.scene
    assert ADDON_MODULE in bpy.context.preferences.addons


def test_online_access_starts_off_and_can_be_toggled(bpy, online_access):
    assert not bpy.app.online_access
    online_access(True)
    assert bpy.app.online_access
    online_access(False)
    assert not bpy.app.online_access


def pump_tick(addon):
    pump = getattr(addon, "pump", None)
    return getattr(pump, "tick", None)


def leftovers(bpy, tick, before: Snapshot) -> dict[str, list[str]]:
    """Everything still registered by the add-on, by kind; all lists are empty after a clean disable."""
    after = Snapshot.take(bpy)
    found = {f"bpy.types.{name}": sorted(after.properties[name] - before.properties[name]) for name in WATCHED_TYPES}
    found["bpy.app.handlers"] = owned_handlers(bpy, ADDON_MODULE)
    found["bpy.app.timers"] = ["pump.tick"] if tick is not None and bpy.app.timers.is_registered(tick) else []
    found["preferences.addons"] = [ADDON_MODULE] if ADDON_MODULE in bpy.context.preferences.addons else []
    return found


def test_disable_leaves_nothing_registered(bpy, addon, pre_install):
    """Disabling removes everything the add-on registered, including a pump timer that is running (as during
    a job; the test starts it itself if the add-on has not, since timers never fire in the bpy module)."""
    tick = pump_tick(addon)
    if tick is not None and not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=1.0, persistent=True)
    disable_addon()
    try:
        found = leftovers(bpy, tick, pre_install)
        assert found == {kind: [] for kind in found}
    finally:
        enable_addon()
    assert ADDON_MODULE in bpy.context.preferences.addons
