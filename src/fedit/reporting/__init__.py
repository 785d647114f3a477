"""What a run and an evaluation show people: report.md, plots, markdown tables.

A leaf below ``experiment``: it reads files and results and imports nothing of the training
or evaluation machinery.
"""
