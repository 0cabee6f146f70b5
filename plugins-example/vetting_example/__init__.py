"""An example third-party Vetting plugin, packaged on its own.

Everything Vetting sees of it is the ``vetting`` entry point in ``pyproject.toml``
pointing at :mod:`vetting_example.plugin`; the modules next to it hold the work.
"""

__version__ = "0.1.0"
