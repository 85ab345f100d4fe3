"""``edgekiln fleet``: many models for many targets as stage tasks, on Ray or in one process.

``spec`` reads the fleet file, ``plan`` turns it into per-model build plans and tasks, ``tasks`` runs one
task (the same code on a Ray worker and with ``--no-ray``), ``engines`` schedules tasks, ``run``
assembles each model's output from the shared stage cache, ``report`` writes the fleet report, ``live``
draws the per-model progress table on a terminal.
Nothing here imports Ray at load time.
"""
