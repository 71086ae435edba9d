"""I-Scene for Blender: an image and its instance map become an editable 3D scene, one object per instance.

The add-on talks to an ``iscene-server`` over HTTP. Worker threads do the network I/O and post events; one
main-thread pump (:mod:`.pump`) applies every change to Blender data, so Blender never waits on the network.
"""

from . import job_operators, operators, overlay, panel, preferences, props, pump, server, server_operators

OPERATOR_MODULES = (operators, job_operators, server_operators)
_MODULES = (preferences, props, server, *OPERATOR_MODULES, panel, overlay)


def register():
    for module in _MODULES:
        module.register()


def unregister():
    pump.shutdown()
    for module in reversed(_MODULES):
        module.unregister()
