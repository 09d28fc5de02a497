"""Speed, measured here and never in tests: ``python cli.py bench``.

- ``timing``: best-of-N wall time (one process or the slowest rank), the
  machine's matrix-multiply peak, peak memory;
- ``flops``: the FLOPs of the paper's models;
- ``convolutions``: ``--what layers``, each convolution pass and the GEMMs it
  is made of, against the peak;
- ``module``: ``--what module``, the Slot Attention module alone;
- ``step``: ``--what step``, images/s of a full training step of each task
  configuration (beside PyTorch where it is installed), and ``--what data``;
- ``profiler``: where a step's time goes (``--profile``): by function, by
  autograd primitive, by convolution, and its array calls (NumPy) or device
  time (CuPy), counted by ``launches``;
- ``torch_twin``: the PyTorch twin of the models that ``step`` times beside slotref;
- ``allreduce``: ``--what allreduce``, the gradient allreduce timed and its
  scaling projected.

The modules import one another downwards only (timing and flops at the
bottom, ``step`` at the top); this file imports none of them.
"""
