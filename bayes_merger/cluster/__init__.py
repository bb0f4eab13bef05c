"""Trials on WebUIs across several machines, on Ray (``cluster.address``; ``pip install 'bayes-merger[ray]'``).

What runs where:

  driver  (the machine ``bayes-merger`` runs on) the optimiser, the executor, the trial log, best.yaml,
          the report and the images in the run folder; it never loads the models during the run
  host    (every machine started with ``--resources='{"webui": N}'``) one Ray actor per WebUI on it
          (``host.TrialHost``): it reads the models from its own disk once (checked to be the driver's
          files), keeps them resident, merges, hands the merge to its WebUI, renders, scores, and
          returns the score, the per-image records and the image files (kilobytes; no tensor
          travels through Ray)

To the executor a host's WebUI is one more slot (``hosts.RayHost``): the trial's prepare is a no-op
and its render one remote call; an actor or a node that dies is a lost WebUI, its trial goes to
another host.

    settings.py     cluster.address and what a cluster run cannot do, checked before any work
    connect.py      joining the Ray cluster, and the hosts that offer WebUIs
    host.py         the actor: one WebUI on one host, and the trials it runs there
    hosts.py        the driver's side: the actors started, each a Slot, remote errors as lost WebUIs
"""
