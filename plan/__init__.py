"""codeparrot-plan: per-GPU memory and speed of a training layout, predicted before launch (plan/memory.py),
the communication it adds (plan/comm.py), a search over layouts (plan/search.py) and the command line
(plan/cli.py). It reads the model's and training's configs; nothing below it imports it.
"""
