"""Method adapters, one module per method (discovered by `benchmark.engine.method_registry`).

`methods/common/` holds the parts several methods share (backbones, samplers, memories, losses,
pseudo-labelling), written once so that adapters differ only where their papers do.
"""
