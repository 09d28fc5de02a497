"""slotref: a readable reference implementation of Slot Attention.

Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020.
Every layer is a pure function over a nested dict of parameters; gradients come
from autograd; ``slotref.backend`` is the only module that knows NumPy from CuPy.
"""

__version__ = "0.1.0"
