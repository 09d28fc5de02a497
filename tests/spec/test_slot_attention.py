"""The Slot Attention module (Algorithm 1) as a specification.

* Proposition 1 as Hypothesis properties, for every ablation switch the proof
  of appendix D covers;
* a literal, loop-based transcription of Algorithm 1 that the vectorised
  module must match;
* one direct computation per ablation switch of appendix B;
* K and T as call arguments, gradients against finite differences, bad input.

Everything runs in float64 on the CPU. Plain NumPy helpers below (``np_*``)
are written independently of ``slotref.layers`` so that a mistake there cannot
hide in both sides of a comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from slotref.backend import tree_leaves, tree_map
from slotref.slot_attention import (
    SlotAttentionConfig,
    init_slot_attention,
    sample_initial_slots,
    slot_attention,
    slot_noise,
)

F64 = np.float64

# --------------------------------------------------------------------------
# Plain NumPy, one paper formula each (last axis = features).

LAYER_NORM_EPS = 1e-3  # Keras' LayerNormalization default, as the official code


def np_layer_norm(p, x):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LAYER_NORM_EPS) * p["scale"] + p["offset"]


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_gru(p, state, inputs):
    """Reset-after GRU, Keras gate order [z, r, n]."""
    d = state.shape[-1]
    gx = inputs @ p["w_input"] + p["b_input"]
    gh = state @ p["w_hidden"] + p["b_hidden"]
    z = np_sigmoid(gx[..., :d] + gh[..., :d])
    r = np_sigmoid(gx[..., d:2 * d] + gh[..., d:2 * d])
    n = np.tanh(gx[..., 2 * d:] + r * gh[..., 2 * d:])
    return (1 - z) * n + z * state


def np_mlp(p, x):
    hidden = np.maximum(x @ p[0]["w"] + p[0]["b"], 0.0)
    return hidden @ p[1]["w"] + p[1]["b"]


# --------------------------------------------------------------------------
# Problems: a config, parameters moved off their initial values, inputs and
# initial slots.

# Every ablation switch of appendix B. Proposition 1's proof (appendix D)
# applies to all of them once the initial slots are given: each switch only
# changes a per-element map (LayerNorm, projections, GRU, MLP), the softmax
# axis, or how the sum over inputs is normalised.
SWITCHES = {
    "paper default": {},
    "aggregation=sum (Fig. 7)": {"aggregation": "sum"},
    "aggregation=sum_layernorm (Fig. 7)": {"aggregation": "sum_layernorm"},
    "slot_init=per_slot (Fig. 9)": {"slot_init": "per_slot"},
    "softmax_axis=inputs (Fig. 10)": {"softmax_axis": "inputs"},
    "softmax_axis=inputs, aggregation=sum (Fig. 10, footnote 2)": {"softmax_axis": "inputs", "aggregation": "sum"},
    "update=none (Fig. 11)": {"update": "none"},
    "layer_norms=off (Fig. 13)": {"layer_norms": False},
    "residual_mlp=off (Fig. 14)": {"residual_mlp": False},
    "temperature=one (Fig. 15)": {"temperature": "one"},
    "epsilon_placement=denominator (Fig. 16)": {"epsilon_placement": "denominator"},
    "soft k-means (App. B)": None,
}


def make_config(switch: str, input_size: int, slot_size: int, num_slots: int) -> SlotAttentionConfig:
    common = dict(input_size=input_size, slot_size=slot_size, mlp_hidden_size=16, num_train_slots=num_slots)
    if SWITCHES[switch] is None:
        return SlotAttentionConfig.soft_kmeans(**{**common, "input_size": slot_size})
    return SlotAttentionConfig(**common, **SWITCHES[switch])


def random_params(config: SlotAttentionConfig, rng: np.random.Generator) -> dict:
    """Initial parameters plus noise, so that LayerNorm scale/offset and the
    biases are not 1/0 and a misplaced or ignored parameter shows."""
    params = init_slot_attention(rng, config)
    return tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), params)


def make_problem(config, batch, num_inputs, num_slots, seed):
    rng = np.random.default_rng(seed)
    params = random_params(config, rng)
    inputs = rng.standard_normal((batch, num_inputs, config.input_size))
    slots = sample_initial_slots(params, slot_noise(rng, batch, num_slots, config.slot_size, F64))
    return params, inputs, slots


@dataclass
class Case:
    batch: int
    num_inputs: int
    num_slots: int
    input_size: int
    slot_size: int
    num_iterations: int
    perm_inputs: np.ndarray
    perm_slots: np.ndarray
    seed: int


@st.composite
def cases(draw, num_iterations=st.integers(0, 4)):
    """Random N, K, D_inputs, D, T, batch, pi_i, pi_s and a seed for the values."""
    n = draw(st.integers(1, 10))
    k = draw(st.integers(1, 6))
    return Case(
        batch=draw(st.integers(1, 3)), num_inputs=n, num_slots=k,
        input_size=draw(st.integers(1, 6)), slot_size=draw(st.integers(1, 6)),
        num_iterations=draw(num_iterations),
        perm_inputs=np.array(draw(st.permutations(range(n))), dtype=int),
        perm_slots=np.array(draw(st.permutations(range(k))), dtype=int),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def case_problem(switch, case):
    config = make_config(switch, case.input_size, case.slot_size, case.num_slots)
    return (config, *make_problem(config, case.batch, case.num_inputs, case.num_slots, case.seed))


def assert_close(actual, expected, tol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max(initial=0))))


# --------------------------------------------------------------------------
# Proposition 1: SA(pi_i . inputs, pi_s . slots) = pi_s . SA(inputs, slots).

@pytest.mark.parametrize("switch", SWITCHES)
@settings(deadline=None)
@given(case=cases())
def test_output_is_invariant_to_input_permutation_and_equivariant_to_slot_permutation(switch, case):
    config, params, inputs, slots = case_problem(switch, case)
    t = case.num_iterations
    out = slot_attention(params, inputs, slots, t, config)
    out_permuted = slot_attention(params, inputs[:, case.perm_inputs], slots[:, case.perm_slots], t, config)
    assert_close(out_permuted, out[:, case.perm_slots])


@pytest.mark.parametrize("switch", SWITCHES)
@settings(deadline=None)
@given(case=cases())
def test_attention_maps_permute_with_inputs_and_slots(switch, case):
    config, params, inputs, slots = case_problem(switch, case)
    t = case.num_iterations
    _, attn = slot_attention(params, inputs, slots, t, config, return_attention=True)
    _, attn_permuted = slot_attention(params, inputs[:, case.perm_inputs], slots[:, case.perm_slots], t, config,
                                      return_attention=True)
    assert attn.shape == (case.batch, t, case.num_inputs, case.num_slots)
    assert_close(attn_permuted, attn[:, :, case.perm_inputs][:, :, :, case.perm_slots])


def test_per_slot_initialisation_breaks_slot_exchangeability_when_slots_are_sampled_in_the_call():
    """Appendix B / Figure 9: with per-slot mu_k, sigma_k the k-th initial slot
    is tied to position k. The module given explicit slots still satisfies
    Proposition 1 (tested above), but the model "sample, then run" does not
    treat its slots as a set: which noise vector meets which (mu_k, sigma_k)
    changes the *set* of output slots, not just its order. With the shared
    initialisation the same re-pairing is a mere relabelling."""
    batch, n, k, d, t = 2, 9, 4, 5, 3
    perm = np.array([1, 2, 3, 0])
    for slot_init in ("shared", "per_slot"):
        config = SlotAttentionConfig(input_size=3, slot_size=d, mlp_hidden_size=16, slot_init=slot_init,
                                     num_train_slots=k)
        rng = np.random.default_rng(7)
        params = random_params(config, rng)
        if slot_init == "per_slot":  # well separated per-slot means, so the effect is not subtle
            params["slots_mu"] = 2.0 * rng.standard_normal((k, d))
        inputs = rng.standard_normal((batch, n, 3))
        noise = slot_noise(rng, batch, k, d, F64)

        def sample_then_run(p, eps):
            return slot_attention(p, inputs, sample_initial_slots(p, eps), t, config)

        out = sample_then_run(params, noise)
        # (a) Permuting the i.i.d. noise, i.e. drawing the same K samples in another order.
        out_noise_permuted = sample_then_run(params, noise[:, perm])
        # (b) Permuting which slot position owns which (mu_k, sigma_k), the same noise.
        reassigned = dict(params, slots_mu=params["slots_mu"][..., perm, :] if slot_init == "per_slot"
                          else params["slots_mu"],
                          slots_log_sigma=params["slots_log_sigma"][..., perm, :] if slot_init == "per_slot"
                          else params["slots_log_sigma"])
        out_reassigned = sample_then_run(reassigned, noise)

        if slot_init == "shared":
            assert_close(out_noise_permuted, out[:, perm])        # a relabelling of the same set
            assert_close(out_reassigned, out)                     # nothing to re-pair
        else:
            for other in (out_noise_permuted, out_reassigned):
                # Not only a different order: no permutation of `out` gives `other`.
                for b in range(batch):
                    distance = np.linalg.norm(other[b][:, None, :] - out[b][None, :, :], axis=-1)
                    assert distance.min(axis=1).max() > 1e-3
            # The module itself is still equivariant once the slots are sampled.
            slots = sample_initial_slots(params, noise)
            assert_close(slot_attention(params, inputs, slots[:, perm], t, config), out[:, perm])


def test_per_slot_initialisation_samples_slot_k_from_its_own_mu_and_sigma_and_fixes_k():
    config = SlotAttentionConfig(slot_size=4, input_size=4, slot_init="per_slot", num_train_slots=3)
    params = random_params(config, np.random.default_rng(0))
    assert params["slots_mu"].shape == params["slots_log_sigma"].shape == (3, 4)
    noise = slot_noise(np.random.default_rng(1), 2, 3, 4, F64)
    slots = sample_initial_slots(params, noise)
    for j in range(3):
        assert_close(slots[:, j], params["slots_mu"][j] + np.exp(params["slots_log_sigma"][j]) * noise[:, j])
    # "adding additional slots at test time is not possible without re-training" (appendix B)
    with pytest.raises(ValueError, match="trained with K = 3 slots"):
        sample_initial_slots(params, slot_noise(np.random.default_rng(1), 2, 5, 4, F64))


# --------------------------------------------------------------------------
# Normalisation of the attention, T = 0, K and T as call arguments.

@pytest.mark.parametrize("switch", SWITCHES)
@settings(deadline=None)
@given(case=cases(num_iterations=st.integers(1, 3)))
def test_attention_sums_to_one_over_its_softmax_axis(switch, case):
    """Equation (1): each input's attention sums to 1 over the slots; under the
    inputs-axis ablation each slot's attention sums to 1 over the inputs."""
    config, params, inputs, slots = case_problem(switch, case)
    _, attn = slot_attention(params, inputs, slots, case.num_iterations, config, return_attention=True)
    axis = 3 if config.softmax_axis == "slots" else 2      # (B, T, N, K)
    assert np.all(attn >= 0)
    np.testing.assert_allclose(attn.sum(axis=axis), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("switch", SWITCHES)
def test_zero_iterations_return_the_initial_slots(switch):
    config = make_config(switch, 3, 4, 5)
    params, inputs, slots = make_problem(config, 2, 6, 5, seed=3)
    out, attn = slot_attention(params, inputs, slots, 0, config, return_attention=True)
    np.testing.assert_array_equal(out, slots)
    assert attn.shape == (2, 0, 6, 5)
    np.testing.assert_array_equal(slot_attention(params, inputs, slots, 0, config), slots)


def test_number_of_slots_and_iterations_are_call_arguments():
    """A module initialised for K = 7 (T = 3) runs with K = 11, T = 5, unchanged."""
    config = SlotAttentionConfig()  # paper sizes: D_inputs = D = 64
    rng = np.random.default_rng(0)
    params = init_slot_attention(rng, config)
    before = copy.deepcopy(params)
    inputs = rng.standard_normal((2, 16, 64))
    for k, t in [(7, 3), (11, 5)]:
        slots = sample_initial_slots(params, slot_noise(rng, 2, k, 64, F64))
        out, attn = slot_attention(params, inputs, slots, t, config, return_attention=True)
        assert out.shape == (2, k, 64)
        assert attn.shape == (2, t, 16, k)
        assert np.all(np.isfinite(out))
    assert [p for p, _ in tree_leaves(params)] == [p for p, _ in tree_leaves(before)]
    for (_, a), (_, b) in zip(tree_leaves(params), tree_leaves(before)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# Gradients of the whole module (slot sampling included) against finite differences.

@pytest.mark.parametrize("switch", SWITCHES)
def test_gradients_match_finite_differences(switch):
    config = make_config(switch, 3, 4, 3)
    rng = np.random.default_rng(11)
    params = random_params(config, rng)
    inputs = rng.standard_normal((2, 5, config.input_size))
    noise = slot_noise(rng, 2, 3, 4, F64)

    def module(tree):
        slots = sample_initial_slots(tree["params"], tree["noise"])
        return slot_attention(tree["params"], tree["inputs"], slots, 2, config)

    check_grads(module, modes=["rev"], order=1)({"params": params, "inputs": inputs, "noise": noise})


# --------------------------------------------------------------------------
# Algorithm 1, literally: one example, one input, one slot at a time.

def algorithm_1_by_loops(params, inputs, slots, num_iterations, epsilon=1e-8):
    """Algorithm 1 and equations (1)-(2) transcribed with Python loops."""
    batch, n, _ = inputs.shape
    k, d = slots.shape[1], slots.shape[2]
    w_k, w_q, w_v = params["project_k"]["w"], params["project_q"]["w"], params["project_v"]["w"]
    out = np.empty(slots.shape)
    attn_out = np.empty((batch, num_iterations, n, k))
    for b in range(batch):
        x = [np_layer_norm(params["norm_inputs"], inputs[b, i]) for i in range(n)]   # 3: inputs = LayerNorm(inputs)
        keys = [x_i @ w_k for x_i in x]
        values = [x_i @ w_v for x_i in x]
        s = [slots[b, j] for j in range(k)]
        for t in range(num_iterations):                                              # 4: for t = 0 ... T
            s_prev = s                                                               # 5: slots_prev = slots
            s = [np_layer_norm(params["norm_slots"], s_j) for s_j in s]              # 6: slots = LayerNorm(slots)
            q = [s_j @ w_q for s_j in s]
            m = [[keys[i] @ q[j] / np.sqrt(d) for j in range(k)] for i in range(n)]   # (1): M = k q^T / sqrt(D)
            attn = [[np.exp(m[i][j]) / sum(np.exp(m[i][l]) for l in range(k))          # 7: softmax over slots
                     for j in range(k)] for i in range(n)]
            w = [[(attn[i][j] + epsilon) / sum(attn[l][j] + epsilon for l in range(n))  # (2) with attn + eps
                  for j in range(k)] for i in range(n)]
            updates = [sum(w[i][j] * values[i] for i in range(n)) for j in range(k)]  # 8: WeightedMean
            s = [np_gru(params["gru"], s_prev[j], updates[j]) for j in range(k)]     # 9: GRU(state=slots_prev)
            s = [s_j + np_mlp(params["mlp"], np_layer_norm(params["norm_mlp"], s_j))  # 10: += MLP(LayerNorm)
                 for s_j in s]
            attn_out[b, t] = np.array(attn)
        out[b] = np.array(s)                                                          # 11: return slots
    return out, attn_out


@settings(deadline=None)
@given(case=cases())
def test_module_matches_a_loop_transcription_of_algorithm_1(case):
    config = SlotAttentionConfig(input_size=case.input_size, slot_size=case.slot_size)  # paper's switches
    params, inputs, slots = make_problem(config, case.batch, case.num_inputs, case.num_slots, case.seed)
    out, attn = slot_attention(params, inputs, slots, case.num_iterations, config, return_attention=True)
    expected_out, expected_attn = algorithm_1_by_loops(params, inputs, slots, case.num_iterations)
    assert_close(out, expected_out)
    assert_close(attn, expected_attn)


# --------------------------------------------------------------------------
# Each ablation switch of appendix B changes the computation as described.
# One iteration (T = 1) from explicit slots, checked against a direct formula.

def small(**switches) -> SlotAttentionConfig:
    return SlotAttentionConfig(input_size=5, slot_size=4, mlp_hidden_size=16, **switches)


def one_iteration(config, seed=0):
    """Run the module for T = 1; also return the directly computed logits M
    (equation (1), lines 3-7) and values v(inputs)."""
    params, inputs, slots = make_problem(config, batch=2, num_inputs=7, num_slots=3, seed=seed)
    out, attn = slot_attention(params, inputs, slots, 1, config, return_attention=True)
    x = np_layer_norm(params["norm_inputs"], inputs) if config.layer_norms else inputs
    s = np_layer_norm(params["norm_slots"], slots) if config.layer_norms else slots
    keys, values = x @ params["project_k"]["w"], x @ params["project_v"]["w"]
    queries = s @ params["project_q"]["w"]
    logits = np.einsum("bnd,bkd->bnk", keys, queries) / np.sqrt(config.slot_size)   # (B, N, K)
    return params, slots, out, attn[:, 0], logits, values


def weighted_sum(weights, values):
    return np.einsum("bnk,bnd->bkd", weights, values)            # W^T v(inputs), (B, K, D)


def test_mean_aggregation_adds_epsilon_to_the_attention_then_renormalises_over_inputs():
    eps = 0.05  # large, so the placement of epsilon is visible
    _, _, out, attn, logits, values = one_iteration(small(epsilon=eps, update="none", residual_mlp=False))
    expected_attn = np_softmax(logits, axis=2)
    weights = (expected_attn + eps) / (expected_attn + eps).sum(axis=1, keepdims=True)
    assert_close(attn, expected_attn)
    assert_close(out, weighted_sum(weights, values))


def test_epsilon_in_the_denominator_divides_by_the_attention_sum_plus_epsilon():
    eps = 0.05
    _, _, out, _, logits, values = one_iteration(small(epsilon=eps, epsilon_placement="denominator",
                                                       update="none", residual_mlp=False))
    attn = np_softmax(logits, axis=2)
    assert_close(out, weighted_sum(attn / (attn.sum(axis=1, keepdims=True) + eps), values))
    _, _, out_on_attention, *_ = one_iteration(small(epsilon=eps, update="none", residual_mlp=False))
    assert np.abs(out - out_on_attention).max() > 1e-4
    # Figure 16: with the paper's eps = 1e-8 the two placements agree.
    _, _, tiny_denominator, *_ = one_iteration(small(epsilon_placement="denominator"))
    _, _, tiny_attention, *_ = one_iteration(small())
    assert_close(tiny_denominator, tiny_attention, tol=1e-6)


def test_sum_aggregation_is_attention_transposed_times_values_without_renormalisation():
    _, _, out, attn, logits, values = one_iteration(small(aggregation="sum", update="none", residual_mlp=False))
    expected_attn = np_softmax(logits, axis=2)
    assert_close(attn, expected_attn)
    assert_close(out, weighted_sum(expected_attn, values))
    _, _, mean_out, *_ = one_iteration(small(update="none", residual_mlp=False))
    assert np.abs(out - mean_out).max() > 1e-3


def test_sum_layernorm_aggregation_is_layernorm_of_the_weighted_sum():
    config = small(aggregation="sum_layernorm", update="none", residual_mlp=False)
    params, _, out, _, logits, values = one_iteration(config)
    expected = np_layer_norm(params["norm_updates"], weighted_sum(np_softmax(logits, axis=2), values))
    assert_close(out, expected)


def test_softmax_over_inputs_normalises_each_slots_attention_over_the_inputs():
    config = small(softmax_axis="inputs", aggregation="sum", update="none", residual_mlp=False)
    _, _, out, attn, logits, values = one_iteration(config)
    expected_attn = np_softmax(logits, axis=1)
    assert_close(attn, expected_attn)
    assert_close(out, weighted_sum(expected_attn, values))


def weighted_mean_updates(logits, values, eps=1e-8):
    attn = np_softmax(logits, axis=2) + eps
    return weighted_sum(attn / attn.sum(axis=1, keepdims=True), values)


def test_gru_update_takes_the_previous_slots_as_state_and_the_updates_as_input():
    params, slots, out, _, logits, values = one_iteration(small(residual_mlp=False))
    assert "mlp" not in params
    assert_close(out, np_gru(params["gru"], slots, weighted_mean_updates(logits, values)))


def test_no_update_function_takes_the_updates_as_the_new_slots():
    params, _, out, _, logits, values = one_iteration(small(update="none", residual_mlp=False))
    assert "gru" not in params
    assert_close(out, weighted_mean_updates(logits, values))


def test_residual_mlp_adds_an_mlp_of_the_layernormed_slots():
    params, slots, out, _, logits, values = one_iteration(small())
    gru_out = np_gru(params["gru"], slots, weighted_mean_updates(logits, values))
    assert_close(out, gru_out + np_mlp(params["mlp"], np_layer_norm(params["norm_mlp"], gru_out)))


def test_layer_norms_off_removes_all_three_layernorms():
    params, slots, out, _, logits, values = one_iteration(small(layer_norms=False))
    assert not {"norm_inputs", "norm_slots", "norm_mlp"} & set(params)
    gru_out = np_gru(params["gru"], slots, weighted_mean_updates(logits, values))
    assert_close(out, gru_out + np_mlp(params["mlp"], gru_out))


def test_temperature_one_equals_sqrt_d_temperature_with_logits_scaled_by_sqrt_d():
    config = small()
    params, inputs, slots = make_problem(config, batch=2, num_inputs=7, num_slots=3, seed=5)
    scaled = dict(params, project_k={"w": params["project_k"]["w"] * np.sqrt(config.slot_size)})
    out_one = slot_attention(params, inputs, slots, 3, replace(config, temperature="one"))
    assert_close(out_one, slot_attention(scaled, inputs, slots, 3, config))
    assert np.abs(out_one - slot_attention(params, inputs, slots, 3, config)).max() > 1e-3


# --------------------------------------------------------------------------
# Soft k-means (appendix B): identity k/q/v, no GRU, no LayerNorm.

def test_soft_kmeans_config_has_no_projection_gru_or_layernorm_parameters():
    config = SlotAttentionConfig.soft_kmeans(input_size=4, slot_size=4)
    assert (config.projections, config.update, config.layer_norms) == ("identity", "none", False)
    # The paper names only k/q/v, GRU and LayerNorm; the residual MLP stays unless switched off.
    assert config.residual_mlp
    assert set(init_slot_attention(np.random.default_rng(0), config)) == {"slots_mu", "slots_log_sigma", "mlp"}
    bare = SlotAttentionConfig.soft_kmeans(input_size=4, slot_size=4, residual_mlp=False)
    assert set(init_slot_attention(np.random.default_rng(0), bare)) == {"slots_mu", "slots_log_sigma"}


def soft_kmeans_by_hand(inputs, centroids, num_iterations, mlp_params=None, eps=1e-8):
    """Dot-product soft k-means: responsibilities softmax_k(<x_n, mu_k> / sqrt(D)),
    centroids = responsibility-weighted mean of the points (+ residual MLP)."""
    d = centroids.shape[-1]
    for _ in range(num_iterations):
        resp = np_softmax(np.einsum("bnd,bkd->bnk", inputs, centroids) / np.sqrt(d), axis=2) + eps
        centroids = weighted_sum(resp / resp.sum(axis=1, keepdims=True), inputs)
        if mlp_params is not None:
            centroids = centroids + np_mlp(mlp_params, centroids)
    return centroids


@pytest.mark.parametrize("residual_mlp", [False, True], ids=["pure", "with residual MLP"])
def test_soft_kmeans_config_is_dot_product_soft_kmeans(residual_mlp):
    config = SlotAttentionConfig.soft_kmeans(input_size=4, slot_size=4, mlp_hidden_size=16,
                                             residual_mlp=residual_mlp)
    params, inputs, slots = make_problem(config, batch=2, num_inputs=12, num_slots=3, seed=2)
    expected = soft_kmeans_by_hand(inputs, slots, 3, params["mlp"] if residual_mlp else None)
    assert_close(slot_attention(params, inputs, slots, 3, config), expected)


def test_soft_kmeans_needs_inputs_and_slots_of_the_same_width():
    with pytest.raises(ValueError, match="input_size == slot_size"):
        SlotAttentionConfig.soft_kmeans(input_size=3, slot_size=4)


# --------------------------------------------------------------------------
# Bad input: a ValueError that says what was expected.

@pytest.mark.parametrize("inputs_shape, slots_shape, num_iterations, message", [
    ((6, 5), (2, 3, 4), 1, r"inputs \(B, N, 5\), got shape \(6, 5\)"),
    ((2, 6, 5, 1), (2, 3, 4), 1, r"inputs \(B, N, 5\), got shape \(2, 6, 5, 1\)"),
    ((2, 6, 7), (2, 3, 4), 1, r"inputs \(B, N, 5\), got shape \(2, 6, 7\)"),
    ((2, 6, 5), (3, 3, 4), 1, r"initial slots \(2, K, 4\), got shape \(3, 3, 4\)"),
    ((2, 6, 5), (2, 3, 6), 1, r"initial slots \(2, K, 4\), got shape \(2, 3, 6\)"),
    ((2, 6, 5), (2, 4), 1, r"initial slots \(2, K, 4\), got shape \(2, 4\)"),
    ((2, 6, 5), (2, 0, 4), 1, r"K >= 1 slots, got 0"),
    ((2, 6, 5), (2, 3, 4), -1, r"T >= 0, got -1"),
    ((2, 6, 5), (2, 3, 4), 1.5, r"T >= 0, got 1.5"),
], ids=["inputs 2-D", "inputs 4-D", "inputs width", "slots batch", "slots width", "slots 2-D", "K = 0",
        "T < 0", "T not an integer"])
def test_bad_input_raises_a_value_error_saying_what_was_expected(inputs_shape, slots_shape, num_iterations,
                                                                 message):
    config = small()
    params = init_slot_attention(np.random.default_rng(0), config)
    with pytest.raises(ValueError, match=message):
        slot_attention(params, np.zeros(inputs_shape), np.zeros(slots_shape), num_iterations, config)


def test_bad_slot_noise_and_unknown_switch_values_raise_value_errors():
    params = init_slot_attention(np.random.default_rng(0), small())
    with pytest.raises(ValueError, match=r"slot noise must be \(B, K, 4\), got shape \(2, 3, 5\)"):
        sample_initial_slots(params, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"aggregation must be one of \('mean', 'sum', 'sum_layernorm'\)"):
        SlotAttentionConfig(aggregation="max")
