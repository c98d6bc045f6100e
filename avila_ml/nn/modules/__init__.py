"""nn layers, one file per family."""
