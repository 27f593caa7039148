"""The package version. Kept equal to pyproject.toml's by a test; not read from the installed
metadata because the GPU machine imports the package from source (PYTHONPATH), uninstalled."""

__version__ = "0.1.0"
