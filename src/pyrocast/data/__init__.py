"""Data platform: sources, validation, spatial splits and versions of the tile dataset."""
