"""Evaluation metrics of the paper (appendix E.9): Average Precision and ARI.

Host-only NumPy. Every function accepts array-likes (NumPy arrays, lists, or
anything ``np.asarray`` understands); device arrays must be moved to the host
by the caller (``slotref.backend``).

- ``average_precision``, ``ap_table``, ``ap_by_num_objects``: set prediction on
  CLEVR (Section 4.2, Figure 5, Table 3, Figures 21/22), exactly as the official
  ``slot_attention/utils.py::average_precision_clevr`` (google-research).
- ``adjusted_rand_index``, ``fg_ari``: object discovery (Section 4.1, Table 1),
  as DeepMind's ``multi_object_datasets/segmentation_metrics.py``.
"""

import numpy as np

from slotref import paper

from slotref.paper import ATTRIBUTE_SLICES, COORD_SCALE, COORDS, PRESENCE

# Figure 5 / Table 3: AP_inf, AP_1, AP_0.5, AP_0.25, AP_0.125.
AP_THRESHOLDS = paper.AP_THRESHOLDS


def _is_infinite(threshold):
    # The official code spells "no threshold" as -1; we also accept np.inf.
    return threshold == -1 or threshold == np.inf


def _attributes(objects):
    """Argmax of the four discrete attributes. (..., 19) -> (..., 4) int."""
    # np.argmax breaks ties to the first index, like tf.argmax in the official code.
    return np.stack([np.argmax(objects[..., s], axis=-1) for s in ATTRIBUTE_SLICES], axis=-1)


def interpolated_average_precision(precision, recall):
    """VOC every-point interpolated AP (official ``compute_average_precision``).

    precision, recall: (D,) per detection in confidence order. Sentinels
    (r=0, p=0) and (r=1, p=0) are added, precision is made monotone
    non-increasing from the right, and AP = sum_i (r_i - r_{i-1}) * p_i over
    the points where recall changes ("area under the smoothed precision recall
    curve at unique recall values", E.9).
    """
    recall = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    precision = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    # Where recall does not change the step is 0, so summing all steps equals
    # the official sum over `indices_recall`.
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def average_precision(predictions, targets, threshold):
    """Average Precision for CLEVR set prediction (appendix E.9).

    predictions: (B, K, 19), K slots per image; the last number is the
        confidence (predicted presence).
    targets: (B, M, 19), zero-padded real objects (presence 1 = real).
    threshold: distance threshold in CLEVR's original [-3, 3] units;
        ``np.inf`` or ``-1`` (the official spelling) means no distance check.
    Returns a float in [0, 1]; ``nan`` when the batch holds no real object
    (recall has no denominator; the official code divides by zero there).

    Procedure (official ``average_precision_clevr``): every one of the B*K
    slots is a detection, sorted by confidence, highest first, across the whole
    batch. For each detection, scan the real objects of its own image whose
    argmax size, material, shape and colour all equal the detection's, and take
    the one at the smallest distance ``||6 * (pred_xyz - true_xyz)||`` (first
    in object order on equal distances, the official strict ``<`` scan). The
    detection is a true positive when that distance is strictly ``< threshold``
    (or the threshold is infinite) and that object was not matched by an
    earlier detection; otherwise a false positive.

    Matching rule, deliberately the official one rather than "first/nearest
    *unmatched* object": the best-distance scan runs over all attribute-matching
    objects, matched or not, and if the nearest one is already taken the
    detection is a false positive even when another unmatched object with the
    same attributes lies within the threshold. This only differs for scenes
    with two objects of identical attributes and reproduces the numbers of
    Figure 5 / Table 3. (An older revision of the official code also counted a
    detection with no attribute match as a true positive at threshold -1; the
    current code, and this one, do not.)

    Ties in confidence: a stable sort on the negated confidence, so tied
    detections keep their flat (image, slot) order, image 0 slot 0 first. The
    official ``np.argsort(...)[::-1]`` leaves the order of ties unspecified.
    Unlike the official code (float32 precision/recall), this uses float64.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    batch_size, num_slots, _ = predictions.shape
    num_objects = targets.shape[1]

    # Official `if target_real_obj:` (truthiness) for the scan.
    real = targets[..., PRESENCE] != 0                                    # (B, M)
    num_real = int(np.sum(real))
    if num_real == 0:
        return float("nan")

    # Attribute equality and distance of every slot to every object of its image.
    same_attributes = np.all(
        _attributes(predictions)[:, :, None, :] == _attributes(targets)[:, None, :, :],
        axis=-1) & real[:, None, :]                                       # (B, K, M)
    delta = COORD_SCALE * (predictions[:, :, None, COORDS] - targets[:, None, :, COORDS])
    distance = np.where(same_attributes, np.linalg.norm(delta, axis=-1), np.inf)  # (B, K, M)
    # Best-distance scan: argmin returns the first minimum, as the strict `<` scan.
    best_id = np.argmin(distance, axis=-1)                                # (B, K)
    best_distance = np.min(distance, axis=-1)                             # (B, K)
    has_candidate = np.any(same_attributes, axis=-1)                      # (B, K)
    if _is_infinite(threshold):
        hit = has_candidate
    else:
        hit = has_candidate & (best_distance < threshold)                 # strict <

    # Detections in confidence order across the batch (stable: ties by flat index).
    confidence = predictions[..., PRESENCE].reshape(-1)                   # (B*K,)
    order = np.argsort(-confidence, kind="stable")
    hit = hit.reshape(-1)[order]
    image = np.repeat(np.arange(batch_size), num_slots)[order]
    matched_object = image * num_objects + best_id.reshape(-1)[order]

    # Each object matched at most once: among hits, only the earliest detection
    # of a given (image, object) is a true positive.
    true_positive = np.zeros(order.shape[0], dtype=bool)
    hit_positions = np.flatnonzero(hit)
    _, first = np.unique(matched_object[hit_positions], return_index=True)
    true_positive[hit_positions[first]] = True

    accumulated_tp = np.cumsum(true_positive)
    recall = accumulated_tp / num_real
    precision = accumulated_tp / np.arange(1, order.shape[0] + 1)
    return interpolated_average_precision(precision, recall)


def ap_table(predictions, targets, thresholds=AP_THRESHOLDS):
    """AP at each distance threshold (Figure 5, Table 3).

    predictions: (B, K, 19); targets: (B, M, 19).
    Returns {threshold: AP} in the order of ``thresholds``.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    return {t: average_precision(predictions, targets, t) for t in thresholds}


def ap_by_num_objects(predictions, targets, thresholds=AP_THRESHOLDS):
    """AP broken down by the number of objects in the scene (Figures 21/22).

    predictions: (B, K, 19); targets: (B, M, 19).
    Returns {n: {threshold: AP}} for every n that occurs, n ascending; each AP
    is computed over the images with exactly n real objects only.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    counts = np.sum(targets[..., PRESENCE] != 0, axis=-1)                 # (B,)
    return {int(n): ap_table(predictions[counts == n], targets[counts == n], thresholds)
            for n in np.unique(counts)}


def _to_one_hot(masks, name):
    """Cluster memberships as (B, N, C) float64, and the label of each column.

    Integer or bool label maps (B, ...) are one-hot encoded over the labels
    present in the batch (returned as the second value); float arrays are
    one-hot/soft memberships (B, ..., C), returned flattened to (B, N, C) with
    ``None`` for the labels.
    """
    masks = np.asarray(masks)
    if masks.dtype == bool or np.issubdtype(masks.dtype, np.integer):
        labels = masks.reshape(masks.shape[0], -1)                        # (B, N)
        values, ids = np.unique(labels, return_inverse=True)
        return np.eye(values.shape[0])[ids.reshape(labels.shape)], values  # (B, N, C)
    if masks.ndim < 3:
        raise ValueError(f"{name}: float masks are one-hot (B, ..., C); label maps "
                         f"need an integer dtype, got {masks.dtype} {masks.shape}")
    return masks.reshape(masks.shape[0], -1, masks.shape[-1]).astype(np.float64), None


def adjusted_rand_index(true_masks, pred_masks, exclude_background=True):
    """Adjusted Rand Index per image (Table 1; DeepMind ``segmentation_metrics``).

    true_masks: integer (or bool) label map (B, H, W) or (B, N), label 0 =
        background (schema masks), or float one-hot (B, N, C) / (B, H, W, C), the
        DeepMind form, where a pixel whose row is all zero belongs to no
        cluster and is not counted (DeepMind callers drop the background
        channel themselves, so ``exclude_background`` only acts on label maps).
    pred_masks: integer label map of the same leading shape, or one-hot/soft
        memberships (B, ..., K) reduced by argmax over the last axis (a soft
        row is assigned to its most likely slot, as DeepMind's ``tf.argmax``).
        The dtype decides the form: integer/bool = labels, float = one-hot.
    exclude_background: with label maps, drop ground-truth background pixels
        (label 0) from the comparison: FG-ARI.
    Returns (B,) float64 ARI in [-1, 1] (1 = same partition up to relabelling,
    about 0 = chance).

    Contingency table n_ij = einsum of one-hots; with a_i, b_j its marginals
    and n the number of counted pixels,
        ARI = (sum C(n_ij,2) - E) / (max - E),
        E = sum C(a_i,2) sum C(b_j,2) / C(n,2),  max = (sum C(a_i,2) + sum C(b_j,2)) / 2.
    max == E exactly when both partitions are a single cluster or both are all
    singletons (incl. n <= 1 pixels, where both hold); the partitions then
    coincide and the score is 1. That is DeepMind's `both_single_cluster`
    rule (`_all_equal` on both argmaxes), evaluated here on the counted pixels
    only (DeepMind evaluates it on all pixels, so predictions on excluded
    background could turn their 1 into 0/0 = nan), and extended to the
    all-singletons and n == 0 cases, which are 0/0 = nan in DeepMind's code.
    """
    true_oh, true_labels = _to_one_hot(true_masks, "true_masks")          # (B, N, C)
    if true_labels is None and not (np.all((true_oh == 0) | (true_oh == 1))
                                    and np.all(np.sum(true_oh, axis=-1) <= 1)):
        # DeepMind's contract: ground truth is hard one-hot (never 0/255 masks).
        raise ValueError("one-hot true_masks must be 0/1 with at most one 1 per pixel")
    pred_oh, pred_labels = _to_one_hot(pred_masks, "pred_masks")          # (B, N, K)
    if pred_labels is None:
        pred_oh = np.eye(pred_oh.shape[-1])[np.argmax(pred_oh, axis=-1)]  # soft -> hard
    if true_oh.shape[:2] != pred_oh.shape[:2]:
        raise ValueError(f"true and predicted masks disagree on (batch, pixels): "
                         f"{true_oh.shape[:2]} vs {pred_oh.shape[:2]}")
    if true_labels is not None and exclude_background:
        true_oh = true_oh[..., true_labels != 0]                          # FG-ARI: drop label 0

    n_ij = np.einsum("bnc,bnk->bck", true_oh, pred_oh)                    # (B, C, K)
    # Predictions on uncounted pixels do not enter n_ij, so take the marginals from it.
    a = np.sum(n_ij, axis=2)                                              # (B, C)
    b = np.sum(n_ij, axis=1)                                              # (B, K)
    n = np.sum(a, axis=1)                                                 # (B,)
    # Twice the pair counts (x(x-1) = 2 C(x,2)); the factors of 2 cancel.
    rindex = np.sum(n_ij * (n_ij - 1), axis=(1, 2))
    aindex = np.sum(a * (a - 1), axis=1)
    bindex = np.sum(b * (b - 1), axis=1)
    all_pairs = n * (n - 1)
    # Exact integer-valued floats (< 2**53 for any realistic image): exact tests.
    degenerate = ((aindex == all_pairs) & (bindex == all_pairs)) | ((aindex == 0) & (bindex == 0))
    safe_pairs = np.where(all_pairs > 0, all_pairs, 1.0)
    expected = aindex * bindex / safe_pairs
    maximum = (aindex + bindex) / 2
    denominator = np.where(degenerate, 1.0, maximum - expected)
    return np.where(degenerate, 1.0, (rindex - expected) / denominator)


def fg_ari(true_masks, alpha_or_attention):
    """FG-ARI of per-slot soft masks against ground-truth label maps (Table 1).

    true_masks: integer label map (B, H, W) or (B, N), 0 = background.
    alpha_or_attention: per-slot masks (B, H, W, K) (decoder alpha after the
        softmax over slots) or (B, N, K) (attention), slots on the last axis;
        each pixel goes to its argmax slot.
    Returns (B,) ARI over foreground pixels; average over images for Table 1.
    """
    soft = np.asarray(alpha_or_attention, dtype=np.float64)
    return adjusted_rand_index(true_masks, soft, exclude_background=True)


# Names of the four discrete attributes, in the order of ATTRIBUTE_SLICES.
ATTRIBUTE_NAMES = tuple(name for name, _, _ in paper.ATTRIBUTES)


def attribute_accuracy(predictions, targets) -> dict:
    """How well matched predictions get each attribute right: a diagnostic beside AP.

    Each real object is matched to one prediction by the Hungarian algorithm on
    the mean absolute difference of the 19 numbers (as the set loss matches,
    with L1 instead of Huber). Returns the accuracy of the argmax of each
    attribute, of all four together, and the median distance of the matched
    positions in CLEVR units: early in training AP stays near zero while these
    show what the model has already learned (size before colour, say).
    """
    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    hits = {name: [] for name in [*ATTRIBUTE_NAMES, "all"]}
    distances = []
    for b, i, j in matched_objects(predictions, targets):
        real, pred = targets[b, i], predictions[b, j]
        correct = _attributes(real) == _attributes(pred)
        for name, ok in zip(ATTRIBUTE_NAMES, correct):
            hits[name].append(ok)
        hits["all"].append(bool(correct.all()))
        distances.append(np.linalg.norm(COORD_SCALE * (real[COORDS] - pred[COORDS])))
    result = {f"acc_{name}": float(np.mean(v)) if v else float("nan") for name, v in hits.items()}
    result["median_distance"] = float(np.median(distances)) if distances else float("nan")
    return result


def matched_objects(predictions, targets) -> list[tuple[int, int, int]]:
    """(example, object row, slot) of every real object and the prediction matched to it: the
    Hungarian algorithm on the mean absolute difference of the 19 numbers (``attribute_accuracy``)."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for b, (pred, true) in enumerate(zip(np.asarray(predictions, np.float64), np.asarray(targets, np.float64))):
        rows = np.flatnonzero(true[:, PRESENCE] > 0.5)
        if len(rows) == 0:
            continue
        cost = np.abs(true[rows, None, :] - pred[None, :, :]).mean(-1)
        r, c = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))  # NaN predictions match last
        out += [(b, int(rows[i]), int(j)) for i, j in zip(r, c)]
    return out
