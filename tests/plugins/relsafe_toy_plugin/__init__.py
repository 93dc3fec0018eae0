"""relsafe-toy-plugin: an outside package that adds a backbone, a method, a suite and an attack
to relsafe through the ``relsafe.plugins`` entry-point group, without touching relsafe.

Its distribution declares (``pyproject.toml``)::

    [project.entry-points."relsafe.plugins"]
    toy = "relsafe_toy_plugin"

and importing this package registers everything (docs/extending.md walks through each part).
"""

from relsafe_toy_plugin import attack, backbone, method, suite  # noqa: F401 - they register
