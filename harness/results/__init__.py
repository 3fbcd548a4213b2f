"""Results: what runs leave behind and what is made of it.

rundir.py (the run directory, read and written), collect.py (runs and curves tables from run
directories or wandb), stats.py (intervals, tests, power), compare.py (comparison tables),
equivalence.py (TOST against margins), timing.py (speed confounded with time), sequential.py
(looks declared up front), interactions.py (difference of differences), scale.py (the effect across
depths, the compute multiplier), target.py (time to a target val bpb), plots.py, render.py (a
report folder), publish.py (its files replaced all at once), callback.py (the report at the end of
a multirun), wandb_import.py, synthetic.py (sweeps with known numbers, for tests and previews).
"""
