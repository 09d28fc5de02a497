"""Specification of the evaluation metrics (appendix E.9): AP and (FG-)ARI.

Hand-built AP cases state their expected value with the hand computation in a
comment: the detection sequence in confidence order (T = true positive,
F = false positive), recall r and precision p after each detection, the
precision made monotone from the right, and AP = sum over recall steps of
(r_i - r_{i-1}) * p_i.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slotref.metrics import (attribute_accuracy, AP_THRESHOLDS, adjusted_rand_index, ap_by_num_objects,
                             ap_table, average_precision, fg_ari)


def obj(x=0.5, y=0.5, z=0.5, size=0, material=0, shape=0, color=0, presence=1.0):
    """One row of the 19-number layout (docs/datasets.md, "The schema")."""
    row = np.zeros(19)
    row[0:3] = x, y, z
    row[3 + size] = 1
    row[5 + material] = 1
    row[7 + shape] = 1
    row[10 + color] = 1
    row[18] = presence
    return row


PAD = np.zeros(19)


def batch(*images):
    """Stack images (lists of rows), zero-padding to the longest."""
    length = max(len(image) for image in images)
    return np.array([list(image) + [PAD] * (length - len(image)) for image in images])


RED_CUBE = dict(shape=0, color=4)
BLUE_SPHERE = dict(shape=1, color=1, size=1)
GREEN_CYLINDER = dict(shape=2, color=5, material=1)


# ----------------------------------------------------------------------------
# AP: hand-built cases
# ----------------------------------------------------------------------------

def test_perfect_predictions_score_one_at_every_threshold():
    # Image 0: 3 objects, image 1: 2 objects; 4 slots each. Real slots copy their
    # target (confidence 1), spare slots are empty (confidence 0). Sequence
    # T T T T T F F F: p = 1 until r = 1, so AP = 1.
    targets = batch([obj(0.1, 0.2, 0.3, **RED_CUBE), obj(0.7, 0.2, 0.3, **BLUE_SPHERE),
                     obj(0.4, 0.9, 0.1, **GREEN_CYLINDER)],
                    [obj(0.3, 0.3, 0.3, **RED_CUBE), obj(0.6, 0.6, 0.6, **RED_CUBE)])
    predictions = batch(list(targets[0]) + [PAD], list(targets[1][:2]) + [PAD, PAD])
    assert targets.shape == (2, 3, 19) and predictions.shape == (2, 4, 19)
    table = ap_table(predictions, targets)
    assert list(table) == list(AP_THRESHOLDS)
    assert all(ap == 1.0 for ap in table.values())


def test_empty_slots_with_low_confidence_after_all_true_positives_keep_ap_one():
    # Empty slots predict garbage attributes and positions but rank last:
    # T T F F F, p = 1 until r = 1, AP = 1 even though precision then drops.
    targets = batch([obj(0.2, 0.2, 0.2, **RED_CUBE), obj(0.8, 0.8, 0.8, **BLUE_SPHERE)])
    predictions = batch([obj(0.9, 0.1, 0.5, presence=0.1, **GREEN_CYLINDER),
                         obj(0.2, 0.2, 0.2, presence=0.95, **RED_CUBE),
                         obj(0.1, 0.9, 0.5, presence=0.05, **BLUE_SPHERE),
                         obj(0.8, 0.8, 0.8, presence=0.9, **BLUE_SPHERE),
                         obj(0.2, 0.2, 0.2, presence=0.0, **RED_CUBE)])  # duplicate, last
    for threshold in AP_THRESHOLDS:
        assert average_precision(predictions, targets, threshold) == 1.0


def test_duplicate_detection_is_a_false_positive():
    # Two objects. Detections: red cube (0.9), red cube again (0.8), blue sphere
    # (0.7). Sequence T F T: r = .5 .5 1, p = 1 1/2 2/3, monotone p = 1 2/3 2/3.
    # AP = .5 * 1 + .5 * 2/3 = 5/6.
    targets = batch([obj(0.2, 0.2, 0.2, **RED_CUBE), obj(0.8, 0.8, 0.8, **BLUE_SPHERE)])
    predictions = batch([obj(0.2, 0.2, 0.2, presence=0.9, **RED_CUBE),
                         obj(0.2, 0.2, 0.2, presence=0.8, **RED_CUBE),
                         obj(0.8, 0.8, 0.8, presence=0.7, **BLUE_SPHERE)])
    for threshold in AP_THRESHOLDS:
        assert average_precision(predictions, targets, threshold) == pytest.approx(5 / 6)


def test_one_wrong_attribute_makes_a_false_positive():
    # Detections: red cube with the wrong colour (0.9), blue sphere (0.8), red
    # cube (0.7). Sequence F T T: r = 0 .5 1, p = 0 1/2 2/3, monotone 2/3 2/3 2/3.
    # AP = .5 * 2/3 + .5 * 2/3 = 2/3, at every threshold (even infinite).
    targets = batch([obj(0.2, 0.2, 0.2, **RED_CUBE), obj(0.8, 0.8, 0.8, **BLUE_SPHERE)])
    for wrong in (dict(color=5), dict(shape=2), dict(size=1), dict(material=1)):
        attributes = {**RED_CUBE, **wrong}
        predictions = batch([obj(0.2, 0.2, 0.2, presence=0.9, **attributes),
                             obj(0.8, 0.8, 0.8, presence=0.8, **BLUE_SPHERE),
                             obj(0.2, 0.2, 0.2, presence=0.7, **RED_CUBE)])
        for threshold in AP_THRESHOLDS:
            assert average_precision(predictions, targets, threshold) == pytest.approx(2 / 3)


def test_attributes_are_compared_after_argmax():
    # Soft attribute scores: argmax size is "large" (0.6 > 0.4) as in the target.
    targets = batch([obj(**BLUE_SPHERE)])
    soft = obj(presence=0.7, **BLUE_SPHERE)
    soft[3:5] = 0.4, 0.6
    assert average_precision(batch([soft]), targets, 0.125) == 1.0
    soft[3:5] = 0.6, 0.4
    assert average_precision(batch([soft]), targets, np.inf) == 0.0


def test_distance_is_in_original_units_and_threshold_is_strict():
    # x differs by 0.0625 in [0, 1] units = 6 * 0.0625 = 0.375 in [-3, 3] units
    # (exact in floating point). One object, one detection: AP is 1 or 0.
    targets = batch([obj(0.5, 0.5, 0.5, **RED_CUBE)])
    predictions = batch([obj(0.5625, 0.5, 0.5, presence=1.0, **RED_CUBE)])
    assert average_precision(predictions, targets, 0.375) == 0.0          # not < 0.375
    assert average_precision(predictions, targets, np.nextafter(0.375, 1)) == 1.0
    assert ap_table(predictions, targets) == {np.inf: 1.0, 1.0: 1.0, 0.5: 1.0,
                                              0.25: 0.0, 0.125: 0.0}


@pytest.mark.parametrize("distance, expected_at_quarter", [(0.24, 1.0), (0.26, 0.0)])
def test_position_just_inside_and_just_outside_a_threshold(distance, expected_at_quarter):
    # 3-4-5 triangle in the x-y plane: the distance is `distance` in original units.
    targets = batch([obj(0.5, 0.5, 0.5, **GREEN_CYLINDER)])
    dx, dy = 0.6 * distance / 6, 0.8 * distance / 6
    predictions = batch([obj(0.5 + dx, 0.5 - dy, 0.5, presence=0.5, **GREEN_CYLINDER)])
    table = ap_table(predictions, targets)
    assert table[0.25] == expected_at_quarter
    assert table[0.125] == 0.0
    assert table[0.5] == table[1.0] == table[np.inf] == 1.0


def test_minus_one_means_infinite_threshold():
    targets = batch([obj(0.0, 0.0, 0.0, **RED_CUBE)])
    predictions = batch([obj(1.0, 1.0, 1.0, presence=0.3, **RED_CUBE)])   # 6 * sqrt(3) away
    assert average_precision(predictions, targets, -1) == 1.0
    assert average_precision(predictions, targets, np.inf) == 1.0
    assert average_precision(predictions, targets, 10.0) == 0.0


def test_ties_in_confidence_keep_flat_slot_order():
    # Two objects; a false positive and a true positive tie at 0.5, a second true
    # positive follows at 0.4. Stable sort: the lower slot index goes first.
    targets = batch([obj(0.2, 0.2, 0.2, **RED_CUBE), obj(0.8, 0.8, 0.8, **BLUE_SPHERE)])
    wrong = obj(0.2, 0.2, 0.2, presence=0.5, **GREEN_CYLINDER)
    right = obj(0.2, 0.2, 0.2, presence=0.5, **RED_CUBE)
    last = obj(0.8, 0.8, 0.8, presence=0.4, **BLUE_SPHERE)
    # F T T: AP = 2/3 (as in the wrong-attribute test).
    assert average_precision(batch([wrong, right, last]), targets, 1.0) == pytest.approx(2 / 3)
    # T F T: AP = 5/6 (as in the duplicate test).
    assert average_precision(batch([right, wrong, last]), targets, 1.0) == pytest.approx(5 / 6)
    # Across images: image 0's slots precede image 1's on ties. Image 0 holds the
    # false positive, image 1 the true positive of the same confidence.
    targets2 = batch([obj(0.8, 0.8, 0.8, **BLUE_SPHERE)], [obj(0.2, 0.2, 0.2, **RED_CUBE)])
    predictions2 = batch([wrong, last], [right, PAD])
    # Sequence: img0 F (0.5), img1 T (0.5), img0 T (0.4), img1 F (0.0):
    # r = 0 .5 1 1, p = 0 1/2 2/3 1/2, monotone 2/3 2/3 2/3 1/2. AP = 2/3.
    assert average_precision(predictions2, targets2, 1.0) == pytest.approx(2 / 3)
    predictions3 = batch([right, last], [wrong, PAD])   # now img0's tie is the T
    # Image 0 has the blue sphere only, so `right` (red cube) is an F there and
    # image 1's `wrong` too: F F T F, r = 0 0 .5 .5, p = 0 0 1/3 1/4. AP = 1/6.
    assert average_precision(predictions3, targets2, 1.0) == pytest.approx(1 / 6)


def test_object_counts_differ_per_image_and_recall_counts_all_real_objects():
    # Image 0: 1 object; image 1: 3 objects (4 real in all); 3 slots each.
    # img0: T (0.9), two empty slots (0.0); img1: T (0.8), F (0.7), T (0.6), one
    # object missed. Sequence T T F T F F:
    #   r = 1/4 1/2 1/2 3/4 3/4 3/4,  p = 1 1 2/3 3/4 3/5 1/2,
    #   monotone p = 1 1 3/4 3/4 3/5 1/2.
    # AP = 1/4 * 1 + 1/4 * 1 + 1/4 * 3/4 = 11/16.
    a, b, c, d = (obj(0.1, 0.1, 0.1, **RED_CUBE), obj(0.5, 0.5, 0.5, **BLUE_SPHERE),
                  obj(0.9, 0.9, 0.1, **GREEN_CYLINDER), obj(0.2, 0.8, 0.5, **BLUE_SPHERE))
    targets = batch([a], [b, c, d])
    predictions = batch([obj(0.1, 0.1, 0.1, presence=0.9, **RED_CUBE), PAD, PAD],
                        [obj(0.5, 0.5, 0.5, presence=0.8, **BLUE_SPHERE),
                         obj(0.9, 0.9, 0.1, presence=0.7, **RED_CUBE),
                         obj(0.9, 0.9, 0.1, presence=0.6, **GREEN_CYLINDER)])
    assert average_precision(predictions, targets, 0.5) == pytest.approx(11 / 16)
    # Figures 21/22: per object count. n = 1: AP 1. n = 3, image 1 alone:
    # T F T, r = 1/3 1/3 2/3, p = 1 1/2 2/3, monotone 1 2/3 2/3,
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    by_count = ap_by_num_objects(predictions, targets)
    assert sorted(by_count) == [1, 3]
    assert all(ap == 1.0 for ap in by_count[1].values())
    assert by_count[3][0.5] == pytest.approx(5 / 9)


def test_nearest_matching_object_already_taken_is_a_false_positive():
    # The official rule: the best-distance scan includes matched objects.
    # Two identical red cubes A (x = 0.5) and B (x = 0.5625), 0.375 apart in
    # original units. Detection 1 (0.9) sits on A: T. Detection 2 (0.8) sits
    # 0.15 from A and 0.225 from B: its nearest match A is taken, so F although
    # B is within 0.25. r = .5 .5, p = 1 1/2: AP = 1/2 (a "first unmatched
    # object" rule would give 1).
    targets = batch([obj(0.5, 0.5, 0.5, **RED_CUBE), obj(0.5625, 0.5, 0.5, **RED_CUBE)])
    predictions = batch([obj(0.5, 0.5, 0.5, presence=0.9, **RED_CUBE),
                         obj(0.525, 0.5, 0.5, presence=0.8, **RED_CUBE)])
    assert average_precision(predictions, targets, 0.25) == pytest.approx(0.5)
    # Closer to B than to A: now the second detection takes B.
    predictions[0, 1, 0] = 0.55
    assert average_precision(predictions, targets, 0.25) == pytest.approx(1.0)


def test_padding_rows_are_never_matched():
    # A padding row (presence 0) whose attributes and position equal the
    # detection's must not count: the detection is F, and AP is 0.
    targets = batch([obj(0.5, 0.5, 0.5, **RED_CUBE),
                     obj(0.2, 0.2, 0.2, presence=0.0, **BLUE_SPHERE)])
    predictions = batch([obj(0.2, 0.2, 0.2, presence=0.9, **BLUE_SPHERE)])
    assert average_precision(predictions, targets, np.inf) == 0.0


def test_no_real_objects_gives_nan():
    predictions = batch([obj(presence=0.9, **RED_CUBE)])
    targets = batch([obj(presence=0.0, **RED_CUBE)])
    assert np.isnan(average_precision(predictions, targets, 1.0))


def test_accepts_lists():
    targets = batch([obj(**RED_CUBE)])
    assert average_precision(targets.tolist(), targets.tolist(), 0.125) == 1.0


# ----------------------------------------------------------------------------
# AP: property test against a literal transcription of the official loop
# ----------------------------------------------------------------------------

def slow_average_precision(pred, attributes, distance_threshold):
    """Plain-loop AP following the official `average_precision_clevr` line by
    line (stable order for ties); -1 or inf means no threshold."""
    batch_size, num_slots, _ = len(pred), len(pred[0]), None
    detections = [(b, k) for b in range(batch_size) for k in range(num_slots)]
    detections = sorted(detections, key=lambda bk: -pred[bk[0]][bk[1]][18])  # stable

    def unpack(row):
        return (list(row[0:3]), [int(np.argmax(row[3:5])), int(np.argmax(row[5:7])),
                                 int(np.argmax(row[7:10])), int(np.argmax(row[10:18]))],
                row[18])

    true_positives, detected = [], set()
    for b, k in detections:
        pred_coords, pred_attr, _ = unpack(pred[b][k])
        best_distance, best_id = float("inf"), None
        for m, target in enumerate(attributes[b]):
            target_coords, target_attr, real = unpack(target)
            if real and pred_attr == target_attr:
                distance = sum((6.0 * (t - p)) ** 2
                               for t, p in zip(target_coords, pred_coords)) ** 0.5
                if distance < best_distance:
                    best_distance, best_id = distance, m
        infinite = distance_threshold == -1 or distance_threshold == float("inf")
        if best_id is not None and (infinite or best_distance < distance_threshold) \
                and (b, best_id) not in detected:
            detected.add((b, best_id))
            true_positives.append(1)
        else:
            true_positives.append(0)

    num_real = sum(1 for image in attributes for target in image if target[18])
    if num_real == 0:
        return float("nan")
    recall, precision, tp = [0.0], [0.0], 0
    for i, hit in enumerate(true_positives):
        tp += hit
        recall.append(tp / num_real)
        precision.append(tp / (i + 1))
    recall.append(1.0)
    precision.append(0.0)
    for i in range(len(precision) - 1, 0, -1):
        precision[i - 1] = max(precision[i - 1], precision[i])
    ap = 0.0
    for i in range(len(recall) - 1):
        if recall[i + 1] != recall[i]:
            ap += precision[i + 1] * (recall[i + 1] - recall[i])
    return ap


# Few attribute values and a coarse position grid, so that matches, duplicate
# attributes, exact distance ties and confidence ties are all common.
COORD_GRID = (0.0, 0.0625, 0.125, 0.5)


@st.composite
def clevr_rows(draw, presence_values):
    row = obj(*(draw(st.sampled_from(COORD_GRID)) for _ in range(3)),
              size=draw(st.integers(0, 1)), material=draw(st.integers(0, 1)),
              shape=draw(st.integers(0, 1)), color=0,
              presence=draw(st.sampled_from(presence_values)))
    return row


@st.composite
def ap_batches(draw):
    batch_size = draw(st.integers(1, 3))
    num_slots, num_objects = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    predictions = np.array([[draw(clevr_rows((0.0, 0.25, 0.5, 1.0))) for _ in range(num_slots)]
                            for _ in range(batch_size)])
    targets = np.array([[draw(clevr_rows((0.0, 1.0))) for _ in range(num_objects)]
                        for _ in range(batch_size)])
    # Some detections copy a target exactly, so true positives are common too.
    for b in range(batch_size):
        for k in range(num_slots):
            if draw(st.booleans()):
                m = draw(st.integers(0, num_objects - 1))
                predictions[b, k, :18] = targets[b, m, :18]
    return predictions, targets


@settings(max_examples=150, deadline=None)
@given(ap_batches(), st.sampled_from(AP_THRESHOLDS + (-1, 0.375, 0.75)))
def test_average_precision_equals_the_literal_official_loop(data, threshold):
    predictions, targets = data
    expected = slow_average_precision(predictions, targets, threshold)
    got = average_precision(predictions, targets, threshold)
    assert got == pytest.approx(expected, abs=1e-12, nan_ok=True)


# ----------------------------------------------------------------------------
# ARI
# ----------------------------------------------------------------------------

def pair_counting_ari(true_labels, pred_labels):
    """ARI of two labelings of the same points by enumerating point pairs.

    a: same cluster in both, b: same in true only, c: same in pred only,
    d: different in both; ARI = 2(ad - bc) / ((a+b)(b+d) + (a+c)(c+d))
    (Hubert & Arabie in pair-count form). 0/0 (both one cluster, both all
    singletons, or fewer than two points) is 1: the partitions coincide.
    """
    a = b = c = d = 0
    for i, j in itertools.combinations(range(len(true_labels)), 2):
        same_true, same_pred = true_labels[i] == true_labels[j], pred_labels[i] == pred_labels[j]
        a += same_true and same_pred
        b += same_true and not same_pred
        c += same_pred and not same_true
        d += not same_true and not same_pred
    denominator = (a + b) * (b + d) + (a + c) * (c + d)
    return 1.0 if denominator == 0 else 2.0 * (a * d - b * c) / denominator


def test_hand_computed_value():
    # true 111222, pred 112233: sum C(n_ij,2) = 1 + 1 = 2, sum C(a,2) = 3 + 3 = 6,
    # sum C(b,2) = 1 + 1 + 1 = 3, C(6,2) = 15: E = 6 * 3 / 15 = 1.2, max = 4.5,
    # ARI = (2 - 1.2) / (4.5 - 1.2) = 8/33.
    ari = adjusted_rand_index([[1, 1, 1, 2, 2, 2]], [[1, 1, 2, 2, 3, 3]])
    assert ari.shape == (1,)
    assert ari[0] == pytest.approx(8 / 33)


def test_identical_partitions_up_to_relabelling_score_one():
    rng = np.random.default_rng(0)
    true = rng.integers(1, 5, size=(3, 8, 8))
    relabel = np.array([0, 7, 2, 9, 4])                  # injective on 1..4
    pred_soft = np.eye(12)[relabel[true]] * 0.8 + 0.01    # soft, argmax = relabelled
    np.testing.assert_allclose(adjusted_rand_index(true, relabel[true]), 1.0)
    np.testing.assert_allclose(adjusted_rand_index(true, pred_soft), 1.0)


def test_single_cluster_on_both_sides_scores_one():
    true = np.full((2, 4, 4), 3)
    pred = np.full((2, 4, 4), 1)
    np.testing.assert_array_equal(adjusted_rand_index(true, pred), [1.0, 1.0])
    # Foreground a single object, prediction one slot on it: 1 (DeepMind's rule).
    true = np.array([[0, 0, 2, 2, 2]])
    pred = np.array([[5, 6, 1, 1, 1]])
    np.testing.assert_array_equal(adjusted_rand_index(true, pred), [1.0])


def test_single_cluster_against_split_scores_zero():
    # E = max - (a part): true one cluster -> sum C(a,2) = C(n,2), E = sum C(b,2)
    # = sum C(n_ij,2): numerator 0.
    assert adjusted_rand_index([[1, 1, 1, 1]], [[1, 1, 2, 2]])[0] == 0.0


def test_background_pixels_do_not_change_fg_ari():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, size=(4, 10, 10))
    pred = rng.integers(0, 5, size=(4, 10, 10))
    other = np.where(true == 0, rng.integers(0, 5, size=true.shape), pred)
    np.testing.assert_array_equal(adjusted_rand_index(true, pred), adjusted_rand_index(true, other))
    # Without exclusion the background is one more ground-truth cluster.
    assert not np.allclose(adjusted_rand_index(true, pred, exclude_background=False),
                           adjusted_rand_index(true, other, exclude_background=False))


def test_fewer_than_two_foreground_pixels_score_one():
    true = np.array([[0, 0, 0, 1], [0, 0, 0, 0]])
    pred = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(adjusted_rand_index(true, pred), [1.0, 1.0])


def test_one_hot_ground_truth_is_deepmind_form():
    # One-hot without the background channel (DeepMind's callers drop it): the
    # same as label maps with the background excluded.
    rng = np.random.default_rng(2)
    true = rng.integers(0, 4, size=(3, 20))
    pred = rng.integers(0, 3, size=(3, 20))
    true_oh = np.eye(4)[true][..., 1:]                    # (B, N, C) float
    np.testing.assert_allclose(adjusted_rand_index(true_oh, pred), adjusted_rand_index(true, pred))
    with pytest.raises(ValueError):
        adjusted_rand_index(true_oh * 255, pred)          # masks are 0/1, never 0/255


def test_fg_ari_uses_argmax_over_slots_of_soft_masks():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, size=(2, 6, 6))
    logits = rng.normal(size=(2, 6, 6, 5))
    alpha = np.exp(logits) / np.sum(np.exp(logits), axis=-1, keepdims=True)  # (B, H, W, K)
    expected = adjusted_rand_index(true, np.argmax(alpha, axis=-1))
    np.testing.assert_allclose(fg_ari(true, alpha), expected)
    np.testing.assert_allclose(fg_ari(true.reshape(2, 36), alpha.reshape(2, 36, 5)), expected)


def test_random_labelings_score_near_zero_on_large_inputs():
    rng = np.random.default_rng(4)
    true = rng.integers(0, 6, size=(4, 100, 100))
    pred = rng.integers(0, 7, size=(4, 100, 100))
    assert np.all(np.abs(adjusted_rand_index(true, pred)) < 0.01)


@st.composite
def labelings(draw):
    batch_size, num_points = draw(st.integers(1, 3)), draw(st.integers(0, 12))
    labels = st.lists(st.lists(st.integers(0, 3), min_size=num_points, max_size=num_points),
                      min_size=batch_size, max_size=batch_size)
    return np.array(draw(labels), dtype=np.int64).reshape(batch_size, num_points), \
        np.array(draw(labels), dtype=np.int64).reshape(batch_size, num_points)


@settings(max_examples=150, deadline=None)
@given(labelings(), st.booleans())
def test_ari_equals_pair_counting_ari(data, exclude_background):
    true, pred = data
    got = adjusted_rand_index(true, pred, exclude_background=exclude_background)
    for image in range(true.shape[0]):
        keep = true[image] != 0 if exclude_background else np.ones(true.shape[1], bool)
        expected = pair_counting_ari(list(true[image][keep]), list(pred[image][keep]))
        assert got[image] == pytest.approx(expected, abs=1e-12)


def test_attribute_accuracy_counts_each_attribute_of_the_matched_prediction():
    # Two real objects; the prediction for the second has the wrong colour and
    # sits 0.6 units (0.1 in [0, 1] coordinates) away; a third, empty slot.
    targets = np.zeros((1, 3, 19))
    for row, (size, material, shape, color) in enumerate([(0, 1, 2, 3), (1, 0, 0, 7)]):
        targets[0, row, :3] = 0.5
        targets[0, row, [3 + size, 5 + material, 7 + shape, 10 + color, 18]] = 1
    predictions = targets.copy()
    predictions[0, 1, 10:18] = 0
    predictions[0, 1, 10] = 1
    predictions[0, 1, 0] += 0.1
    result = attribute_accuracy(predictions[:, ::-1], targets)  # order of slots does not matter
    assert result["acc_size"] == result["acc_material"] == result["acc_shape"] == 1.0
    assert result["acc_color"] == result["acc_all"] == 0.5
    assert result["median_distance"] == pytest.approx(0.3)  # median of 0 and 0.6
