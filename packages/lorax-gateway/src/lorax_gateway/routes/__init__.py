"""Route handlers of the public API (API.md)."""
