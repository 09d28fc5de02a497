"""The official code's TensorFlow 2 checkpoints as slotref parameter trees (no TensorFlow needed).

The official training scripts save ``tf.train.Checkpoint(network=model, optimizer=..., global_step=...)``
where ``model`` wraps one ``SlotAttentionClassifier`` (set prediction) or
``SlotAttentionAutoEncoder`` (object discovery) layer, so every weight's key reads
``network/layer_with_weights-0/<attribute path>/.ATTRIBUTES/VARIABLE_VALUE`` (without ``network/``
for a model saved on its own by ``model.save_weights``). ``name_map`` pairs each leaf of slotref's
tree with its attribute path; the layouts agree (kernels (in, out), convolutions (kh, kw, in, out),
transposed ones (kh, kw, out, in) as Keras, the GRU's gates in Keras' order [z, r, h]) except:

- ``slots_mu``, ``slots_log_sigma``: (1, 1, D) there, (D,) here;
- the GRU bias: one (2, 3D) array there (Keras' reset-after pair), ``b_input`` = row 0 and
  ``b_hidden`` = row 1 here.

What the shapes give: every width, the encoder's and the decoder's depth (6 transposed
convolutions: Table 6's CLEVR decoder; 4: Table 7's). What they do not: K and T (call
arguments), the image size (the official position embeddings are built over fixed grids that
are not saved; both official models take 128x128 images), and the encoder's strides (1, 2, 2, 1 for set
prediction and 1, 1, 1, 1 for discovery, as the official code).

Optimizer state (slots ``.OPTIMIZER_SLOT/...`` and ``optimizer/...``), ``global_step``,
``save_counter`` and the object graph are left out (``Official.ignored`` counts them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slotref.data.tensorbundle import Bundle, BundleError, read_bundle
from slotref.models import ModelConfig, init_model
from slotref.slot_attention import SlotAttentionConfig

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
IGNORED = ("_CHECKPOINTABLE_OBJECT_GRAPH", "global_step/", "save_counter/", "optimizer/")
OFFICIAL_STRIDES = {"setpred": (1, 2, 2, 1), "discovery": (1, 1, 1, 1)}
OFFICIAL_RESOLUTION = 128
# The parts a partial checkpoint may hold, by the official attribute names.
ALL_PARTS = ("encoder", "slot_attention", "head")
PARTS = {"encoder": ("encoder_cnn/", "encoder_pos/", "layer_norm/", "mlp/"), "slot_attention": ("slot_attention/",),
         "head": ("mlp_classifier/", "decoder_pos/", "decoder_cnn/")}


@dataclass
class Official:
    """A checkpoint's model variables by attribute path (``encoder_cnn/layer_with_weights-0/kernel``)."""

    index: Path                      # the .index file, for error messages
    root: str                        # the key prefix of the model: 'network/layer_with_weights-0/' or ...
    variables: dict[str, np.ndarray]
    ignored: dict[str, int] = field(default_factory=dict)   # what was left out: kind -> count
    global_step: int | None = None

    def error(self, name: str, problem: str) -> BundleError:
        return BundleError(f"{self.index}: {self.root}{name}: {problem}")

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.variables:
            raise self.error(name, "missing: not the official model's checkpoint, or not all of it")
        return self.variables[name].shape


def read_official(prefix) -> Official:
    """The model variables of the checkpoint ``prefix`` (or of the latest one named by a directory's
    ``checkpoint`` file), each read and checksummed; BundleError (one line) if anything is wrong."""
    bundle = read_bundle(resolve_prefix(prefix))
    index = Path(f"{bundle.prefix}.index")
    anchor = re.compile(r"(.*?)(encoder_cnn/layer(?:_with_weights)?-0/kernel|slot_attention/slots_mu)"
                        + re.escape(SUFFIX) + "$")
    roots = [m.group(1) for m in map(anchor.match, bundle.entries) if m]
    if not roots:
        raise BundleError(f"{index}: .../slot_attention/slots_mu: missing: not a checkpoint of the official "
                          "Slot Attention models")
    root = min(roots, key=len)
    official = Official(index, root, {})
    for key in sorted(bundle.entries):
        kind = _ignored_kind(key, root)
        if kind:
            official.ignored[kind] = official.ignored.get(kind, 0) + 1
        elif key.startswith(root) and key.endswith(SUFFIX):
            value = bundle.tensor(key)
            if value.dtype.kind != "f":
                raise BundleError(f"{index}: {key}: holds {value.dtype}, expected floating-point weights")
            if not np.isfinite(value).all():
                raise BundleError(f"{bundle.shard_path(bundle.entries[key].shard)}: {key}: holds NaN or infinite "
                                  "values (a diverged run?)")
            official.variables[_attribute_path(key[len(root):-len(SUFFIX)])] = value
        else:
            raise BundleError(f"{index}: {key}: extra variable, not part of the official model")
    step = f"global_step{SUFFIX}"
    if step in bundle.entries:
        official.global_step = int(_read_step(bundle, step))
    return official


def resolve_prefix(prefix) -> Path:
    """A directory: the checkpoint its ``checkpoint`` file names (``model_checkpoint_path``); else as given."""
    prefix = Path(prefix)
    state = prefix / "checkpoint"
    if not prefix.is_dir():
        return prefix
    if not state.is_file():
        raise BundleError(f"{state}: no such file: give the checkpoint's prefix (e.g. {prefix}/ckpt-500)")
    match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(errors="replace"), re.M)
    if not match:
        raise BundleError(f"{state}: names no model_checkpoint_path: give the checkpoint's prefix")
    named = prefix / match.group(1)
    # A path saved absolute names the trainer's folder: the files are the ones beside the state file.
    return named if Path(f"{named}.index").exists() else prefix / Path(match.group(1)).name


def _attribute_path(name: str) -> str:
    """Keras tracks a Sequential's layers twice, as ``layer-N`` and (those with weights) as
    ``layer_with_weights-N``; a checkpoint keeps one path. Every layer of the official Sequentials
    has weights, so both number them alike: the map reads ``layer_with_weights-N``."""
    return re.sub(r"(^|/)layer-(\d+)/", r"\1layer_with_weights-\2/", name)


def _ignored_kind(key: str, root: str) -> str | None:
    if "/.OPTIMIZER_SLOT/" in key or key.startswith("optimizer/"):
        return "optimizer state"
    if key.startswith(IGNORED) and not key.startswith(root):
        return key.split("/")[0]
    return None


def _read_step(bundle: Bundle, key: str) -> int:
    value = bundle.tensor(key)
    return int(value.reshape(-1)[0]) if value.size else 0


# --------------------------------------------------------------------------
# The architecture, read from the shapes.

def _shape(official: Official, name: str, rank: int) -> tuple[int, ...]:
    shape = official.shape(name)
    if len(shape) != rank:
        raise official.error(name, f"has shape {shape}, expected {rank} dimensions")
    return shape


def _depth(official: Official, container: str) -> int:
    n = 0
    while f"{container}/layer_with_weights-{n}/kernel" in official.variables:
        n += 1
    return n


def model_config(official: Official, task: str, num_slots: int | None = None, num_iterations: int = 3,
                 resolution: int = OFFICIAL_RESOLUTION, parts=ALL_PARTS) -> ModelConfig:
    """The ``ModelConfig`` of the checkpoint's model (its ``parts``: without 'head', the head's widths
    are slotref's defaults); K (default: the official code's, 10 for set prediction and 7 for
    discovery), T and the image size are not in the checkpoint."""
    fields = dict(task=task, resolution=(resolution, resolution), encoder_strides=OFFICIAL_STRIDES[task],
                  num_slots=num_slots or (10 if task == "setpred" else 7), num_iterations=num_iterations)
    if "encoder" in parts:
        depth = _depth(official, "encoder_cnn")
        if depth != len(OFFICIAL_STRIDES[task]):
            raise official.error(f"encoder_cnn/layer_with_weights-{depth}/kernel",
                                 f"missing: the official encoder has {len(OFFICIAL_STRIDES[task])} convolutions, "
                                 f"this checkpoint {depth}")
        conv = _shape(official, "encoder_cnn/layer_with_weights-0/kernel", 4)
        fields.update(encoder_channels=conv[3], encoder_kernel=conv[0],
                      mlp_size=_shape(official, "mlp/layer_with_weights-1/kernel", 2)[1])
    if "slot_attention" in parts:
        fields["slot_attention"] = SlotAttentionConfig(
            input_size=_shape(official, "slot_attention/project_k/kernel", 2)[0],
            slot_size=_shape(official, "slot_attention/slots_mu", 3)[-1],
            mlp_hidden_size=_shape(official, "slot_attention/mlp/layer_with_weights-0/kernel", 2)[1])
    if "head" in parts:
        other, head = ("discovery", "decoder_cnn") if task == "setpred" else ("setpred", "mlp_classifier")
        if f"{head}/layer_with_weights-0/kernel" in official.variables:
            raise official.error(f"{head}/layer_with_weights-0/kernel", f"the checkpoint holds a {other} model, "
                                                                        f"not {task}: import it as {other}")
    if "head" in parts and task == "setpred":
        head = [_shape(official, f"mlp_classifier/layer_with_weights-{i}/kernel", 2) for i in (0, 1)]
        fields.update(head_hidden=head[0][-1], output_size=head[1][-1])
    elif "head" in parts:
        layers = _depth(official, "decoder_cnn")
        if layers not in (4, 6):
            raise official.error(f"decoder_cnn/layer_with_weights-{layers}/kernel",
                                 f"missing: a spatial broadcast decoder has 6 (Table 6) or 4 (Table 7) transposed "
                                 f"convolutions, this checkpoint {layers}")
        if layers == 6 and resolution % 16:
            raise BundleError(f"{official.index}: the CLEVR decoder (Table 6) makes images 16 times the side of "
                              f"its first grid: resolution {resolution} is not a multiple of 16")
        fields.update(decoder="clevr" if layers == 6 else "full",
                      decoder_channels=_shape(official, "decoder_cnn/layer_with_weights-0/kernel", 4)[2])
    if fields.get("decoder", "clevr") == "clevr":
        fields["decoder_init_resolution"] = (resolution // 16, resolution // 16)
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise BundleError(f"{official.index}: {err}") from None


# --------------------------------------------------------------------------
# The name map.

def name_map(config: ModelConfig, parts=ALL_PARTS) -> list[tuple[tuple, str, str]]:
    """(path in slotref's tree, official attribute path, how to read it) for every parameter of ``parts``
    ('encoder', 'slot_attention', 'head': the set-prediction MLP or the discovery decoder).
    How: 'same' layout, 'slot' (1, 1, D) -> (D,), 'bias0'/'bias1' a row of the GRU's (2, 3D) bias."""
    def dense(path, name, bias=True):
        rows = [((*path, "w"), f"{name}/kernel", "same")]
        return rows + ([((*path, "b"), f"{name}/bias", "same")] if bias else [])

    def sequential(path, name, count):
        return [row for i in range(count) for row in dense((*path, i), f"{name}/layer_with_weights-{i}")]

    def norm(path, name):
        return [((*path, "scale"), f"{name}/gamma", "same"), ((*path, "offset"), f"{name}/beta", "same")]

    rows = []
    if "encoder" in parts:
        e = ("encoder",)
        rows += sequential((*e, "convs"), "encoder_cnn", len(config.encoder_strides))
        rows += dense((*e, "position_embed"), "encoder_pos/dense") + norm((*e, "norm"), "layer_norm")
        rows += sequential((*e, "mlp"), "mlp", 2)
    if "slot_attention" in parts:
        s, o = ("slot_attention",), "slot_attention"
        rows += [((*s, "slots_mu"), f"{o}/slots_mu", "slot"), ((*s, "slots_log_sigma"), f"{o}/slots_log_sigma", "slot")]
        for p in ("q", "k", "v"):
            rows += dense((*s, f"project_{p}"), f"{o}/project_{p}", bias=False)
        for n in ("inputs", "slots", "mlp"):
            rows += norm((*s, f"norm_{n}"), f"{o}/norm_{n}")
        g = (*s, "gru")
        rows += [((*g, "w_input"), f"{o}/gru/kernel", "same"), ((*g, "w_hidden"), f"{o}/gru/recurrent_kernel", "same"),
                 ((*g, "b_input"), f"{o}/gru/bias", "bias0"), ((*g, "b_hidden"), f"{o}/gru/bias", "bias1")]
        rows += sequential((*s, "mlp"), f"{o}/mlp", 2)
    if "head" in parts and config.task == "setpred":
        rows += sequential(("head",), "mlp_classifier", 2)
    elif "head" in parts:
        from slotref.models import decoder_layers

        rows += dense(("decoder", "position_embed"), "decoder_pos/dense")
        rows += sequential(("decoder", "deconvs"), "decoder_cnn", len(decoder_layers(config)))
    return rows


def _expected(how: str, shape: tuple) -> tuple:
    return {"same": shape, "slot": (1, 1, *shape), "bias0": (2, *shape), "bias1": (2, *shape)}[how]


def convert(official: Official, config: ModelConfig, parts=ALL_PARTS) -> dict:
    """slotref's parameters (float32 NumPy) of ``parts`` of the model ``config``, every shape checked;
    a variable of those parts that the map does not use is an error (all variables, for the whole model)."""
    tree = init_model(np.random.default_rng(0), config)  # the layout to fill
    used = set()
    for path, name, how in name_map(config, parts):
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        shape = parent[path[-1]].shape
        want = _expected(how, shape)
        if official.shape(name) != want:
            raise official.error(name, f"has shape {official.shape(name)}, expected {want} for this model "
                                       "(the variables do not fit one another)")
        value = official.variables[name]
        value = value.reshape(shape) if how == "slot" else value[int(how[-1])] if how.startswith("bias") else value
        parent[path[-1]] = np.array(value, dtype=np.float32)
        used.add(name)
    whole = set(parts) == set(ALL_PARTS)
    scope = tuple(p for part in parts for p in PARTS[part])
    extra = sorted(n for n in official.variables if n not in used and (whole or n.startswith(scope)))
    if extra:
        raise official.error(extra[0], f"extra variable, not part of the slotref {config.task} model")
    keep = {"encoder", "slot_attention"} & set(parts) | ({"head", "decoder"} if "head" in parts else set())
    return {k: v for k, v in tree.items() if k in keep}


def load_official(prefix, task: str, parts=ALL_PARTS, num_slots: int | None = None, num_iterations: int = 3,
                  resolution: int = OFFICIAL_RESOLUTION) -> tuple[ModelConfig, dict, Official]:
    """(config, params, checkpoint) of an official checkpoint: the whole model of ``task``
    ('setpred' or 'discovery'), or ``parts`` of it (('encoder', 'slot_attention') for a checkpoint
    of the encoder and Slot Attention alone; ``params`` then holds those keys)::

        config, params, _ = load_official("ckpt-500", "discovery", num_slots=7)
        out = slotref.autoencoder(params, images, noise, config)
        config, params, _ = load_official("ckpt-1", "setpred", parts=("slot_attention",))
        slots = slotref.slot_attention(params["slot_attention"], inputs, initial_slots, 3, config.slot_attention)

    Raises BundleError (a ValueError; one line naming the file and the variable) for a damaged,
    foreign or mismatched checkpoint.
    """
    if task not in OFFICIAL_STRIDES:
        raise ValueError(f"task must be 'setpred' or 'discovery', got {task!r}")
    unknown = set(parts) - set(ALL_PARTS)
    if unknown or not parts:
        raise ValueError(f"parts must be among {ALL_PARTS}, got {tuple(parts)}")
    official = read_official(prefix)
    config = model_config(official, task, num_slots, num_iterations, resolution, parts)
    try:
        return config, convert(official, config, parts), official
    except ValueError as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"{official.index}: {err}") from None
