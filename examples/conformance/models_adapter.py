"""Whole-model conformance adapters, here filled in with slotref itself: a template for a port's own.

Replace each function's body with a call into your implementation (the
parameters are slotref's tree of ``init_model``; ``architecture`` gives the
encoder strides and the decoder rows). Any subset may be defined. Check them:

    slotref conformance --models examples/conformance/models_adapter.py
"""

from slotref.conformance.model_checks import (reference_autoencoder, reference_autoencoder_grad, reference_setpred,
                                              reference_setpred_grad)
from slotref.losses import hungarian_huber_loss
from slotref.metrics import average_precision as slotref_average_precision


def setpred(params, images, noise, num_iterations, architecture):
    """Images (B, H, W, 3) in [-1, 1], slot noise (B, K, D) -> predictions (B, K, 19) in [0, 1]."""
    return reference_setpred(params, images, noise, num_iterations, architecture)


def set_loss(predictions, targets):
    """The Hungarian-matched Huber loss, a scalar."""
    return hungarian_huber_loss(predictions, targets)


def setpred_grad(params, images, noise, num_iterations, architecture, targets):
    """The loss's gradients, in the layout of params."""
    return reference_setpred_grad(params, images, noise, num_iterations, architecture, targets)


def autoencoder(params, images, noise, num_iterations, architecture):
    """{"recon_combined": (B, H, W, 3), "recons": (B, K, H, W, 3), "masks": (B, K, H, W, 1)}."""
    return reference_autoencoder(params, images, noise, num_iterations, architecture)


def autoencoder_grad(params, images, noise, num_iterations, architecture):
    """Gradients of MSE(recon_combined, images), in the layout of params."""
    return reference_autoencoder_grad(params, images, noise, num_iterations, architecture)


def average_precision(predictions, targets, threshold):
    """AP of E.9 at one distance threshold (inf: none)."""
    return slotref_average_precision(predictions, targets, threshold)
