"""saedoctor's version, in a module of its own so any module can record it without importing
the package's public API (`saedoctor/__init__.py`, which sits above everything)."""

__version__ = "0.1.0"
