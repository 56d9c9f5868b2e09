"""preflab: the small library behind the preference-optimization course.

One module per concept; import what a lesson needs, e.g. ``from preflab.world import make_world``.
Nothing heavy is imported here, so ``import preflab`` is instant.
"""

__version__ = "0.1.0"
