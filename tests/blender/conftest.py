"""Headless Blender harness: the extension built by ``build.py``, installed into the PyPI ``bpy`` wheel in-process.

The whole pytest process shares one ``bpy``, so ``bpy`` is imported lazily by the ``bpy`` fixture (never at
collection time) after ``BLENDER_USER_RESOURCES`` points at a fresh temporary folder; that isolates preferences,
extension repositories and Blender's site-packages from the real user's. The fixtures are package-scoped: the
add-on is disabled and the variable restored as soon as the tests in this folder finish, so later tests (which
run Blender in subprocesses) see the environment they expect.

Facts this harness relies on (bpy 4.5, PyPI wheel):

* ``bpy.app.timers`` never fire inside the module, so tests call the add-on's pump functions directly;
* ``wm.read_homefile(use_empty=True)`` keeps the add-on enabled, but drops every timer that was not registered
  with ``persistent=True``; ``wm.read_factory_settings`` would disable the add-on;
* ``bpy.app.online_access`` starts False and follows ``preferences.system.use_online_access``;
* once an add-on with timers, handlers and registered classes has been installed and a home file read, the
  process can deadlock in bpy's C++ static destructors at exit (its sound "delayed close" thread), so an
  ``atexit`` hook ends the process with ``os._exit`` after pytest has finished, with pytest's exit status.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "build.py"
MANIFEST = REPO / "blender_manifest.toml"
REPO_NAME = "user_default"
EXTENSION_ID = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))["id"] if MANIFEST.is_file() else "iscene"
ADDON_MODULE = f"bl_ext.{REPO_NAME}.{EXTENSION_ID}"
WATCHED_TYPES = ("Scene", "Object", "WindowManager")
HAVE_BPY = importlib.util.find_spec("bpy") is not None

STEPS = 2  # sampling steps per stage: the tiny model's scenes come back in seconds

_sessions: list[pytest.Session] = []


def run_build(*args: str | os.PathLike, python: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess:
    """Run ``build.py`` in a subprocess (plain Python, no ``bpy`` import) and capture its output."""
    command = [*python, str(BUILD_SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)


@dataclass(frozen=True)
class Snapshot:
    """The properties and attributes of the watched ``bpy.types`` classes at one moment."""

    properties: dict[str, frozenset[str]]

    @classmethod
    def take(cls, bpy) -> Snapshot:
        return cls({name: type_properties(getattr(bpy.types, name)) for name in WATCHED_TYPES})


def type_properties(cls) -> frozenset[str]:
    """RNA properties plus Python attributes of a ``bpy.types`` class (add-ons assign both ways)."""
    return frozenset(cls.bl_rna.properties.keys()) | frozenset(dir(cls))


def handler_lists(bpy) -> dict[str, tuple]:
    handlers = bpy.app.handlers
    return {name: tuple(getattr(handlers, name)) for name in dir(handlers)
            if isinstance(getattr(handlers, name), list)}


def owned_handlers(bpy, module_name: str) -> list[str]:
    """``"<list>: <function>"`` for every app handler whose function lives in ``module_name`` or below."""
    return [f"{name}: {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
            for name, fns in handler_lists(bpy).items() for fn in fns
            if str(getattr(fn, "__module__", "")).startswith(module_name)]


def enable_addon(module_name: str = ADDON_MODULE) -> types.ModuleType:
    """Enable the add-on and raise, with the add-on's own exception chained, if it does not come up."""
    import addon_utils
    errors: list[BaseException] = []
    addon_utils.enable(module_name, default_set=True, handle_error=errors.append)
    return require_enabled(module_name, errors)


def disable_addon(module_name: str = ADDON_MODULE) -> None:
    """Disable the add-on; an exception from its ``unregister()`` is re-raised instead of only printed."""
    import addon_utils
    errors: list[BaseException] = []
    addon_utils.disable(module_name, default_set=True, handle_error=errors.append)
    if errors:
        raise RuntimeError(f"{module_name}.unregister() failed: {errors[0]!r}") from errors[0]


def require_enabled(module_name: str, errors: list[BaseException]) -> types.ModuleType:
    import bpy
    module = sys.modules.get(module_name)
    if errors or module is None or module_name not in bpy.context.preferences.addons:
        cause = errors[0] if errors else None
        raise RuntimeError(f"add-on {module_name} did not enable: {cause!r}") from cause
    return module


@pytest.fixture(scope="package")
def blender_user_dir(tmp_path_factory) -> Iterator[Path]:
    """A fresh ``BLENDER_USER_RESOURCES`` folder, set for the Blender tests and restored afterwards."""
    folder = tmp_path_factory.mktemp("blender-user")
    previous = os.environ.get("BLENDER_USER_RESOURCES")
    os.environ["BLENDER_USER_RESOURCES"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("BLENDER_USER_RESOURCES", None)
    else:
        os.environ["BLENDER_USER_RESOURCES"] = previous


@pytest.fixture(scope="package")
def bpy(blender_user_dir, request) -> types.ModuleType:
    """The ``bpy`` module, imported in-process with the isolated user folder and online access off."""
    if not HAVE_BPY:
        pytest.skip("bpy (Blender as a Python module) is not installed")
    if "bpy" in sys.modules:
        pytest.fail("bpy was imported before the Blender harness could isolate BLENDER_USER_RESOURCES")
    module = importlib.import_module("bpy")
    _sessions.append(request.session)
    atexit.register(exit_before_bpy_teardown)
    user = Path(module.utils.resource_path("USER")).resolve()
    assert user.is_relative_to(blender_user_dir.resolve()), f"bpy uses {user}, not the isolated {blender_user_dir}"
    assert not module.app.online_access, "the bpy wheel should start with online access off"
    return module


@pytest.fixture(scope="package")
def extension_zip(tmp_path_factory) -> Path:
    """The extension zip, built by ``build.py`` (with Blender's validator) into a temporary folder."""
    if not HAVE_BPY:
        pytest.skip("bpy (Blender as a Python module) is not installed: no blender_ext.py to validate with")
    output = tmp_path_factory.mktemp("dist")
    result = run_build("--output-dir", output)
    assert result.returncode == 0, f"build.py failed:\n{result.stdout}{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="package")
def pre_install(bpy) -> Snapshot:
    """Properties on the watched types before the add-on was installed."""
    return Snapshot.take(bpy)


@pytest.fixture(scope="package")
def addon(bpy, extension_zip, pre_install) -> Iterator[types.ModuleType]:
    """The installed and enabled add-on module, ``bl_ext.user_default.<id>``; disabled at the end."""
    errors: list[BaseException] = []
    with recording_enable_errors(errors):
        try:
            result = bpy.ops.extensions.package_install_files(
                filepath=str(extension_zip), repo=REPO_NAME, enable_on_install=True)
        except RuntimeError as error:
            raise RuntimeError(f"installing {extension_zip.name} failed: {error}") from (errors or [None])[0]
    assert result == {"FINISHED"}, f"package_install_files returned {result}"
    yield require_enabled(ADDON_MODULE, errors)
    if ADDON_MODULE in bpy.context.preferences.addons:
        disable_addon()


@contextmanager
def recording_enable_errors(errors: list[BaseException]) -> Iterator[None]:
    """Record the exceptions ``addon_utils.enable`` reports while active.

    The install operator turns an add-on's ``register()`` exception into one line of text; the recorded
    exception keeps the add-on's traceback for the failure report.
    """
    import addon_utils
    original = addon_utils.enable

    def enable(*args, handle_error=None, **kwargs):
        def record(error):
            errors.append(error)
            if handle_error is not None:
                handle_error(error)
        return original(*args, handle_error=record, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(addon_utils, "enable", enable)
        yield


@pytest.fixture
def clean_scene(bpy):
    """An empty scene from ``read_homefile(use_empty=True)``, which keeps add-ons enabled (factory reset would not)."""
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


@pytest.fixture
def online_access(bpy) -> Iterator[Callable[[bool], None]]:
    """A setter for Blender's "Allow Online Access"; the original value is restored after the test."""
    system = bpy.context.preferences.system
    original = system.use_online_access

    def set_online_access(allowed: bool) -> None:
        system.use_online_access = allowed
        assert bpy.app.online_access == allowed

    yield set_online_access
    system.use_online_access = original


def exit_before_bpy_teardown() -> None:
    """Registered after ``import bpy``, so it runs before bpy's own exit handlers and skips them (see module doc)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(_sessions[-1].exitstatus) if _sessions else 0)


# --- the artist's inputs, for the session's shared server (``server`` in tests/conftest.py) --------------------
# Tests that need a server of their own (a token, one to kill) start it themselves.

@pytest.fixture(scope="package")
def scene_pngs(small_scene_files) -> tuple[Path, Path]:
    """The two-object example scene as files, named as an artist's files would be (tests/conftest.py)."""
    return small_scene_files


@pytest.fixture
def prefs(bpy, addon, clean_scene, server):
    """The add-on preferences pointed at the test server, with fresh run-time state."""
    preferences = bpy.context.preferences.addons[ADDON_MODULE].preferences
    preferences.server_url, preferences.token, preferences.poll_interval = server.url, "", 0.1
    runtime = addon.pump.RUNTIME
    runtime.stop()
    runtime.jobs.clear()
    runtime.health, runtime.health_error, runtime.health_checked = None, None, 0.0
    return preferences


@pytest.fixture
def inputs(bpy, prefs, scene_pngs):
    """The scene settings: reference image and label map loaded as image datablocks, fast sampling."""
    settings = bpy.context.scene.iscene
    settings.image = bpy.data.images.load(str(scene_pngs[0]))
    settings.labels = bpy.data.images.load(str(scene_pngs[1]))
    settings.steps, settings.detail, settings.seed, settings.scene_size = STEPS, "low", 7, 4.0
    return settings
