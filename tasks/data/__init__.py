"""Data helpers shared by the tasks (file reading, seeded sampling, demo sets)."""
