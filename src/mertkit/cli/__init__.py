"""The `mert` command line: `app.py` is the group, one module per sub-command, each imported
only when it runs, so `mert --help` never pays for torch or the optional extras."""
