"""Weight files: the one reader of checkpoint files, the key maps between other projects'
layouts and ours, and the load report (see the submodules)."""
