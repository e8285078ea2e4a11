"""revvision's command-line layer: entry points shared by ``tools/`` and the console scripts,
and the training checkpointer both tools use (``revvision.checkpointer``)."""
