"""Disk planning and assembly: partition types, the pure layout planner, the image writer."""
