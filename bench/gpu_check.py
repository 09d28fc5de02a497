"""GPU check (issue 6): NumPy vs CuPy agreement and training-step speed on a real GPU.

    python bench/gpu_check.py compare            # one step of each task, NumPy vs CuPy
    python bench/gpu_check.py bench [--tf32]     # images/s at the paper's batch sizes
    python bench/gpu_check.py prop1              # Proposition 1 on the GPU

bench/gpu_check.sh runs everything and writes logs to $OUT.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import autograd
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slotref.backend import get_backend, host_rng, to_float, to_host, tree_leaves  # noqa: E402
from slotref.losses import hungarian_huber_loss, mse  # noqa: E402
from slotref.models import autoencoder, discovery_config, init_model, set_prediction, setpred_config  # noqa: E402
from slotref.optim import Adam  # noqa: E402

CASES = [("setpred-128", "setpred", 128), ("tetrominoes", "discovery", "tetrominoes"),
         ("multi-dsprites", "discovery", "multi-dsprites"), ("clevr6-shapes", "discovery", "clevr6-shapes")]


def host_problem(task, dataset, batch, seed=0):
    config = setpred_config(dataset) if task == "setpred" else discovery_config(dataset)
    rng = host_rng(seed)
    params = init_model(rng, config)
    h, w = config.resolution
    images = rng.uniform(-1, 1, (batch, h, w, 3))
    noise = rng.standard_normal((batch, config.num_slots, config.slot_attention.slot_size))
    targets = np.zeros((batch, 10, 19))
    targets[:, :5] = rng.uniform(0, 1, (batch, 5, 19))
    targets[:, :5, -1] = 1
    return config, params, images, noise, targets


def device_problem(be, task, config, params, images, noise, targets):
    """(parameters on the device, value_and_grad of the task's loss in them)."""
    p = be.tree_asarray(params)
    x, z, t = be.asarray(images), be.asarray(noise), be.asarray(targets)
    if task == "setpred":
        fn = lambda q: hungarian_huber_loss(set_prediction(q, x, z, config), t)  # noqa: E731
    else:
        fn = lambda q: mse(autoencoder(q, x, z, config)["recon_combined"], x)  # noqa: E731
    return p, autograd.value_and_grad(fn)


def loss_and_grads(be, task, config, params, images, noise, targets):
    p, value_and_grad = device_problem(be, task, config, params, images, noise, targets)
    loss, grads = value_and_grad(p)
    return to_float(loss), {k: to_host(v) for k, v in tree_leaves(grads)}


def compare():
    ok = True
    for name, task, dataset in CASES:
        batch = 2 if name == "clevr6-shapes" else 4
        config, params, images, noise, targets = host_problem(task, dataset, batch)
        for dtype in ("float64", "float32"):
            ref = loss_and_grads(get_backend("cpu", dtype), task, config, params, images, noise, targets)
            gpu = loss_and_grads(get_backend("gpu", dtype), task, config, params, images, noise, targets)
            loss_err = abs(ref[0] - gpu[0]) / max(abs(ref[0]), 1e-30)
            # Relative to each leaf's largest entry, except leaves whose true
            # gradient is zero (e.g. the slot LayerNorm offset: softmax over
            # slots ignores a shift shared by all slots), where both sides are
            # rounding noise: those are compared at the whole gradient's scale.
            scale = max(np.max(np.abs(v)) for v in ref[1].values())
            zero = [k for k in ref[1] if np.max(np.abs(ref[1][k])) < 1e-10 * scale]
            grad_err = max(np.max(np.abs(ref[1][k] - gpu[1][k])) / np.max(np.abs(ref[1][k]))
                           for k in ref[1] if k not in zero)
            zero_err = max([np.max(np.abs(gpu[1][k])) / scale for k in zero], default=0.0)
            verdict = "PASS" if dtype == "float32" or (loss_err < 1e-9 and grad_err < 1e-9 and zero_err < 1e-9) \
                else "FAIL"
            ok &= verdict == "PASS"
            print(f"{verdict} {name:<16} {dtype}: loss {ref[0]:.8g} (cpu) {gpu[0]:.8g} (gpu), rel err {loss_err:.2e}; "
                  f"max rel grad err {grad_err:.2e} over {len(ref[1]) - len(zero)} leaves; "
                  f"{len(zero)} zero-gradient leaves within {zero_err:.1e} of the gradient scale", flush=True)
    return ok


def prop1():
    from slotref.slot_attention import SlotAttentionConfig, init_slot_attention, slot_attention
    be = get_backend("gpu", "float64")
    rng = host_rng(3)
    cfg = SlotAttentionConfig()
    params = be.tree_asarray(init_slot_attention(rng, cfg))
    x = rng.standard_normal((4, 256, 64))
    s = rng.standard_normal((4, 7, 64))
    pi_i, pi_s = rng.permutation(256), rng.permutation(7)
    out, attn = slot_attention(params, be.asarray(x), be.asarray(s), 3, cfg, True)
    out_p, attn_p = slot_attention(params, be.asarray(x[:, pi_i]), be.asarray(s[:, pi_s]), 3, cfg, True)
    err = float(np.max(np.abs(to_host(out)[:, pi_s] - to_host(out_p))))
    err_a = float(np.max(np.abs(to_host(attn)[:, :, pi_i][:, :, :, pi_s] - to_host(attn_p))))
    verdict = "PASS" if err < 1e-10 and err_a < 1e-10 else "FAIL"
    print(f"{verdict} Proposition 1 on the GPU (float64): slots err {err:.2e}, attention err {err_a:.2e}")
    return verdict == "PASS"


def bench(tf32: bool):
    import cupy
    be = get_backend("gpu", "float32")
    from slotref import kernels
    print(f"CuPy {cupy.__version__}, {cupy.cuda.runtime.getDeviceProperties(0)['name']}, "
          f"CUPY_TF32={'1' if tf32 else '0'}, kernels: {kernels.active()}", flush=True)
    sizes = {"setpred-128": [512, 256, 128], "tetrominoes": [64], "multi-dsprites": [64], "clevr6-shapes": [64, 32]}
    paper = {"setpred-128": 620, "tetrominoes": 1190, "multi-dsprites": 370, "clevr6-shapes": 67}
    for name, task, dataset in CASES:
        for batch in sizes[name]:
            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            try:
                config, params, images, noise, targets = host_problem(task, dataset, batch)
                p, vg = device_problem(be, task, config, params, images, noise, targets)
                adam = Adam()
                state = adam.init(p)

                def step():
                    loss, grads = vg(p)
                    adam.update(p, grads, state, 1e-6)
                    return loss

                step()
                cupy.cuda.Stream.null.synchronize()
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    step()
                    cupy.cuda.Stream.null.synchronize()
                    times.append(time.perf_counter() - t0)
                sec = min(times)
                print(f"{name:<16} batch {batch:>4}: {sec:.3f} s/step, {batch / sec:8.1f} images/s "
                      f"(paper V100 ~{paper[name]}/s: {batch / sec / paper[name]:.2f}x), "
                      f"pool {pool.total_bytes() / 1e9:.1f} GB", flush=True)
                del p, state, vg
                break
            except cupy.cuda.memory.OutOfMemoryError:
                print(f"{name:<16} batch {batch:>4}: out of memory, trying smaller", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "compare"
    if what == "compare":
        sys.exit(0 if compare() else 1)
    if what == "prop1":
        sys.exit(0 if prop1() else 1)
    if what == "bench":
        bench("--tf32" in sys.argv)
