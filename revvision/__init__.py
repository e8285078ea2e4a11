"""revvision's command-line layer: entry points shared by ``tools/`` and the console scripts."""
