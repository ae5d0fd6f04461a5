"""Evaluators: classification (top-k, confusion matrices), and the read-outs of a
pre-trained student (see the submodules)."""
