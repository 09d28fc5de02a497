"""The paper's experiments as commands: configurations x seeds, trained, evaluated, tabulated.

    python cli.py experiment table3 --steps 500 --seeds 3     # AP, Slot Attention vs Slot MLP
    python cli.py experiment ablations --task setpred --config setpred-no-gru

- ``parts``: configurations, probes, tables, options (what an experiment is made of);
- ``plans``: what each experiment trains and how it is probed (``EXPERIMENTS``);
- ``runner``: training (resumable), evaluation (cached), ``run_experiment``;
- ``report``: mean ± std over seeds beside the paper's numbers.
"""
