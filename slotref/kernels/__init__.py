"""Fast kernels: drop-in replacements for specification functions.

Each kernel declares the specification function it replaces with
``@implements(<spec function>)`` (``slotref.dispatch``, which also chooses
between them: ``SLOTREF_KERNELS=reference|fast|all``); it gives the same outputs
and gradients (``tests/kernels/test_kernels.py`` checks every registered kernel, in
float64). Kernel modules import the specification, never the other way round.

- ``conv``: ``convolution.conv2d_same`` and ``convolution.conv_transpose2d_same``
  as shifted GEMMs over stride phases, with the wide path for thin outputs;
- ``im2col``: the patch matrices those use for few input channels and on
  accelerators;
- ``broadcast``: ``layers.broadcast_embed_conv_transpose2d``, the decoder's
  first layer, without building the broadcast;
- ``fused_cupy``: CuPy kernels for LayerNorm's normalisation, softmax, Huber,
  the GRU gates and the Adam step, each with its VJP; they apply to CuPy
  arrays only;
- ``allocator``: glibc keeps freed host memory (applied by the entry points:
  the command line and ``training.loop``).

``docs/kernels.md`` describes each.
"""
