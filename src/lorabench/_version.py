"""The package version, in a module of its own so that any module can read it without
importing the package face (``lorabench/__init__.py`` imports most of the library)."""

__version__ = "0.1.0"
