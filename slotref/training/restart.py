"""New initial weights for a run whose slots have not bound (``train --restart-unbound S``).

Whether Slot Attention's slots ever leave the even split of the inputs is settled by the initial weights
in the first few hundred steps: with the same data and schedule, one draw binds and another keeps its
slots near-copies of one another for thousands of steps (``docs/binding.md``). A run with
``restart_unbound = S`` therefore reads the binding diagnostics of ``training.binding`` S steps after
each draw of its initial weights, from the parameters trained (a parameter average, ``ema``, still holds
much of the draw's initial weights then); when a sign of unbound slots shows (``binding.UNBOUND_SIGNS``), it
draws new initial weights, starts Adam afresh and starts its learning-rate schedule again from that
step, at most ``MAX_REDRAWS`` times. Steps go on counting and so does the data: step s still reads the
batch and slot noise of (seed, s), and the run ends at its ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass

from slotref.backend import host_rng
from slotref.models import init_model
from slotref.training.binding import UNBOUND_SIGNS, binding_signs, unbound

MAX_REDRAWS = 2  # a run tries at most three draws of its initial weights


@dataclass(frozen=True)
class Draw:
    """Which initial weights a run trains: ``number`` 0 is its first draw, started at step ``start``."""

    number: int = 0
    start: int = 0


def initial_params(config, number: int = 0) -> dict:
    """Draw ``number`` of the initial weights of ``config.model`` (host NumPy): draw 0 is every run's
    first (the parameter stream of ``seed``), each later one a stream of its own."""
    rng = host_rng(config.seed, 0) if number == 0 else host_rng(config.seed, 0, number)
    return init_model(rng, config.model)


def check_to_come(config, draw: Draw, done: int) -> bool:
    """Whether ``draw`` is still to be checked, at or after step ``done``: ``restart_unbound`` steps into
    it, while redraws are left and steps remain to train the next draw. The binding warning waits for it."""
    s = config.restart_unbound
    return s > 0 and draw.number < MAX_REDRAWS and done <= draw.start + s < config.steps


def due(config, draw: Draw, done: int) -> bool:
    """Whether the slots of ``draw`` are checked after step ``done``."""
    return check_to_come(config, draw, done) and done == draw.start + config.restart_unbound


def redraw_signs(binding: dict | None) -> list[str]:
    """The signs of unbound slots (``binding_signs``) that call for new weights; [] when the slots bound
    (or for the Slot MLP, which has no attention: ``binding`` None)."""
    if not set(unbound(binding)) & set(UNBOUND_SIGNS):
        return []
    return binding_signs(binding)


def kept_message(binding: dict, draw: Draw, done: int) -> str:
    """The line a check that keeps ``draw`` prints, with what it read: the evaluations of a run with a
    parameter average report the average, which may still look unbound then."""
    return (f"step {done}: the slots of draw {draw.number + 1} have bound (its parameters: attention entropy "
            f"{binding['entropy'][-1]:.2f}, slot cosine {binding['slot_cosine'][-1]:.2f}); no new weights")


def message(signs: list[str], new: Draw) -> str:
    """The line a redraw to the draw ``new`` prints."""
    return (f"slots have not bound after step {new.start}: {'; '.join(signs)}. New initial weights (draw "
            f"{new.number + 1} of at most {MAX_REDRAWS + 1}), a fresh Adam state and the learning-rate "
            f"schedule from step {new.start}")
