"""The project-wide management commands (demo)."""
